"""int8 post-training quantization on trained networks: accuracy and per-layer SQNR.

Two networks, both trained here on scikit-learn's digits in seconds (no download):

* the demo's separable network (:class:`sepconv_jax.apps.networks.DigitsCNN`,
  ``separable=True``), trained as ``sepconv-jax demo`` trains it (15 epochs,
  AdamW, cosine decay) on the standardized 8x8 images;
* a MobileNetV1 (width 0.25, 10 classes) on the digits upsampled to 32x32, whose
  depthwise channel ranges are then spread over three decades as in trained
  ImageNet MobileNets (:func:`sepconv_jax.export.spread_depthwise_channels`: the
  float function is unchanged, only the folded depthwise kernels' per-channel
  ranges differ).

For each: top-1 test accuracy in float, with int8 weights and activations (per-tensor
and per-channel weight scales), and with the depthwise kernels alone in int8 (which
isolates their failure mode); and the per-layer signal-to-quantization-noise ratios
(:func:`sepconv_jax.export.layer_sqnr_table`) summarized by kind of layer.

Usage: ``python benchmarks/export_quantization.py --out benchmarks/results/export``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import time
from pathlib import Path

import jax
import numpy as np

from sepconv_jax import models
from sepconv_jax.apps.data import digits_data
from sepconv_jax.apps.networks import DigitsCNN
from sepconv_jax.apps.train import train_classifier
from sepconv_jax.export import _digits, layer_sqnr_table, quantization, spread, sqnr_by_kind


def float_logits(model, variables):
    """The float model in inference mode (``train=False`` where ``__call__`` takes it)."""
    takes_train = "train" in inspect.signature(type(model).__call__).parameters
    kwargs = {"train": False} if takes_train else {}
    return jax.jit(lambda x: model.apply(variables, x, **kwargs))


def accuracies(model, variables, x_cal, x_test, y_test) -> dict[str, float]:
    def acc(predict):
        return quantization.accuracy(predict, x_test, y_test)

    out = {"float": acc(float_logits(model, variables))}
    for per_channel, label in ((False, "per_tensor"), (True, "per_channel")):
        for name, options in (
            (f"int8_{label}", {}),
            (f"depthwise_weights_only_{label}", {"kinds": ("depthwise",), "activations": False}),
        ):
            qmodel, qvars = quantization.quantize(
                model, variables, [x_cal], per_channel=per_channel, **options
            )
            out[name] = acc(jax.jit(lambda x, m=qmodel, v=qvars: m.apply(v, x)))
    return out


def report(name, model, variables, x_cal, x_eval, x_test, y_test) -> dict:
    started = time.perf_counter()
    acc = accuracies(model, variables, x_cal, x_test, y_test)
    rows = layer_sqnr_table(model, variables, [x_cal], [x_eval])
    result = {
        "model": name,
        "accuracy": acc,
        "sqnr_by_kind": sqnr_by_kind(rows),
        "layers": rows,
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(name, json.dumps(acc), flush=True)
    return result


def markdown(results: list[dict]) -> str:
    lines = [
        "| network | float | int8 per-tensor | int8 per-channel "
        "| depthwise W only, per-tensor | depthwise W only, per-channel |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        a = r["accuracy"]
        lines.append(
            f"| {r['model']} | {a['float']:.3f} | {a['int8_per_tensor']:.3f} "
            f"| {a['int8_per_channel']:.3f} | {a['depthwise_weights_only_per_tensor']:.3f} "
            f"| {a['depthwise_weights_only_per_channel']:.3f} |"
        )
    lines += [
        "",
        "Per-layer SQNR (dB), median over the layers of each kind: weights (median over "
        "output channels) and the layer's output in the fully quantized model.",
        "",
        "| network | kind | layers | weight, per-tensor | weight, per-channel "
        "| output, per-tensor | output, per-channel |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        for k in r["sqnr_by_kind"]:
            lines.append(
                f"| {r['model']} | {k['kind']} | {k['units']} | {k['weight_sqnr_per_tensor']:.1f} "
                f"| {k['weight_sqnr_per_channel']:.1f} | {k['output_sqnr_per_tensor']:.1f} "
                f"| {k['output_sqnr_per_channel']:.1f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results/export")
    parser.add_argument("--mobilenet-epochs", type=int, default=6)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []

    # The demo's separable network, trained as the demo trains it.
    (x_train, y_train), (x_test, y_test) = digits_data()
    net = DigitsCNN(separable=True)
    trained = train_classifier(
        net, (x_train, y_train), (x_test, y_test), epochs=15, batch_size=32, learning_rate=3e-3
    )
    variables = {"params": jax.device_get(trained.params)}
    print(f"DigitsCNN trained: test accuracy {trained.test_accuracy:.3f}", flush=True)
    results.append(
        report(
            "demo DigitsCNN (separable, 8x8)",
            net,
            variables,
            x_train[:256],
            x_test[:128],
            x_test,
            y_test,
        )
    )

    # MobileNetV1 0.25 on digits at 32x32, depthwise channel ranges spread.
    x_train, y_train, x_test, y_test = _digits.digits(upsample=4)
    mnet = models.MobileNetV1(num_classes=10, width_multiplier=0.25)
    started = time.perf_counter()
    mvars = _digits.train(mnet, x_train, y_train, epochs=args.mobilenet_epochs)
    print(f"MobileNetV1 trained in {time.perf_counter() - started:.0f} s", flush=True)
    results.append(
        report("MobileNetV1 0.25 (32x32)", mnet, mvars, x_train[:256], x_test[:128], x_test, y_test)
    )
    spread_vars, fraction = spread.spread_depthwise_channels(
        mnet, mvars, np.concatenate([x_train, x_test]), decades=3.0
    )
    f = jax.jit(lambda v, x: mnet.apply(v, x, train=False))
    same = float(np.abs(f(spread_vars, x_test) - f(mvars, x_test)).max())
    entry = report(
        "MobileNetV1 0.25 (32x32), depthwise ranges spread",
        mnet,
        spread_vars,
        x_train[:256],
        x_test[:128],
        x_test,
        y_test,
    )
    entry["spread"] = {"fraction_of_channels": fraction, "max_abs_logit_change": same}
    results.append(entry)

    (out / "quantization.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "quantization.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
