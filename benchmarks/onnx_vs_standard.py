"""Our ONNX export of MobileNetV2 1.0/224 against the standard one, in onnxruntime.

The standard graph is timm's ``mobilenetv2_100`` through ``torch.onnx.export``
(TorchScript exporter, ``dynamo=False``: the dynamo exporter needs ``onnxscript``),
and its int8 form onnxruntime's own ``quantize_static`` (QDQ, per-channel, uint8
activations, int8 weights, after its ``quant_pre_process``). Ours is :func:`sepconv_jax.export.to_onnx` of
:class:`sepconv_jax.models.MobileNetV2`, float32 and after
:func:`sepconv_jax.export.quantize`. Weights are random (latency does not depend on
them); calibration uses random inputs. Batch 1, onnxruntime with 2 threads, all four
sessions timed round-robin in one run; each figure is the median over rounds of the
per-round median. Prints the table and each graph's op-type counts.

Run: ``python benchmarks/onnx_vs_standard.py [--rounds 7] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import jax
import numpy as np


def _sessions(folder: str, size: int) -> dict[str, str]:
    import timm
    import torch
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from sepconv_jax import models
    from sepconv_jax.export import quantize, to_onnx
    from tests.export_helpers import random_variables

    rng = np.random.default_rng(0)
    calib = [rng.standard_normal((1, size, size, 3)).astype(np.float32) for _ in range(8)]
    paths = {}
    model = models.MobileNetV2()
    variables = random_variables(model, calib[0])
    paths["ours f32"] = to_onnx(model, variables, calib[0], os.path.join(folder, "ours.onnx"))
    qmodel, qvars = quantize(model, variables, [np.concatenate(calib)])
    paths["ours int8"] = to_onnx(qmodel, qvars, calib[0], os.path.join(folder, "ours_q.onnx"))

    net = timm.create_model("mobilenetv2_100", pretrained=False).eval()
    std = os.path.join(folder, "standard.onnx")
    with torch.no_grad():
        torch.onnx.export(
            net,
            (torch.zeros(1, 3, size, size),),
            std,
            dynamo=False,
            opset_version=17,
            input_names=["input"],
        )
    paths["standard f32"] = std

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"input": c.transpose(0, 3, 1, 2).copy()} for c in calib])

        def get_next(self):
            return next(self.items, None)

    # onnxruntime's documented first step: shape inference and graph optimization.
    prep = os.path.join(folder, "standard_prep.onnx")
    quant_pre_process(std, prep)
    stdq = os.path.join(folder, "standard_q.onnx")
    quantize_static(
        prep,
        stdq,
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    paths["standard int8 (quantize_static)"] = stdq
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="folder for a JSON of the figures")
    args = parser.parse_args()
    import onnxruntime as ort

    from sepconv_jax.export import op_counts

    folder = tempfile.mkdtemp()
    paths = _sessions(folder, args.size)
    sessions = {}
    feeds = {}
    for name, path in paths.items():
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        optimized = path.replace(".onnx", "_opt.onnx")
        options.optimized_model_filepath = optimized
        sess = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0]
        shape = [d if isinstance(d, int) else 1 for d in inp.shape]
        feeds[name] = {inp.name: np.zeros(shape, np.float32)}
        sessions[name] = sess
        for _ in range(5):
            sess.run(None, feeds[name])
    per_round: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(args.rounds):
        for name, sess in sessions.items():
            times = []
            for _ in range(args.runs):
                t = time.perf_counter()
                sess.run(None, feeds[name])
                times.append(time.perf_counter() - t)
            per_round[name].append(statistics.median(times) * 1e3)
    ms = {name: statistics.median(v) for name, v in per_round.items()}
    print(
        f"MobileNetV2 1.0/{args.size}, batch 1, onnxruntime {ort.__version__}, "
        f"{args.threads} threads, jax {jax.__version__}"
    )
    print(f"{'graph':34s} {'ms':>7s}")
    for name, value in ms.items():
        print(f"{name:34s} {value:7.2f}")
    print(f"ours f32 / standard f32: {ms['ours f32'] / ms['standard f32']:.2f}")
    print(
        f"ours int8 / standard int8: {ms['ours int8'] / ms['standard int8 (quantize_static)']:.2f}"
    )
    print(f"ours int8 / ours f32: {ms['ours int8'] / ms['ours f32']:.2f}")
    counts = {}
    for name, path in paths.items():
        counts[name] = {
            "graph": op_counts(path),
            "optimized": op_counts(path.replace(".onnx", "_opt.onnx")),
        }
        print(f"{name}: {dict(sorted(counts[name]['graph'].items()))}")
        print(f"  onnxruntime optimized: {dict(sorted(counts[name]['optimized'].items()))}")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "onnx_vs_standard.json"), "w") as f:
            json.dump({"ms": ms, "per_round_ms": per_round, "op_counts": counts}, f, indent=1)


if __name__ == "__main__":
    main()
