"""Export to ONNX and LiteRT (TFLite), and int8 post-training quantization.

Not imported by ``import sepconv_jax``; it loads when imported. The exporters need
extras: ``pip install "sepconv-jax[export]"`` for ONNX (``onnx``, ``onnxruntime``) and ``"sepconv-jax[litert]"`` for LiteRT (``tensorflow-cpu``,
``ai-edge-litert``); quantization in JAX needs neither.

* :func:`to_onnx`, :func:`to_tflite`: a linen model, an NNX module or a function,
  in inference mode, batch norm folded (:func:`fold_batch_norm`), each depthwise
  layer a grouped ``Conv`` (ONNX, an NCHW graph shaped as the standard PyTorch
  export: 1x1 ``Conv`` pointwise steps, biases in the ``Conv``, ``Clip``, pooled
  ``Gemm`` head) or a ``DEPTHWISE_CONV_2D`` (TFLite).
* :func:`quantize`: int8 weights (per channel or per tensor) and calibrated 8-bit
  activations, simulated in JAX; :func:`to_onnx` writes the result as a QDQ model
  that onnxruntime runs with integer kernels (``QLinearConv``).
* :func:`layer_sqnr_table`, :func:`sqnr_by_kind`, :func:`spread_depthwise_channels`:
  the depthwise failure mode of per-tensor weight scales, measured.
* :mod:`sepconv_jax.export.latency`: batch-1 latency in each runtime.
"""

from typing import Any

from sepconv_jax import _lazy
from sepconv_jax.export.fold import fold_batch_norm as fold_batch_norm
from sepconv_jax.export.litert import run_tflite as run_tflite
from sepconv_jax.export.litert import tflite_ops as tflite_ops
from sepconv_jax.export.litert import to_tflite as to_tflite
from sepconv_jax.export.onnx import conv_groups as conv_groups
from sepconv_jax.export.onnx import op_counts as op_counts
from sepconv_jax.export.onnx import run_onnx as run_onnx
from sepconv_jax.export.onnx import to_onnx as to_onnx
from sepconv_jax.export.quantization import QuantizedModel as QuantizedModel
from sepconv_jax.export.quantization import layer_sqnr_table as layer_sqnr_table
from sepconv_jax.export.quantization import quantize as quantize
from sepconv_jax.export.quantization import sqnr_by_kind as sqnr_by_kind
from sepconv_jax.export.spread import spread_depthwise_channels as spread_depthwise_channels

__all__ = [
    "QuantizedModel",
    "conv_groups",
    "fold_batch_norm",
    "layer_sqnr_table",
    "op_counts",
    "quantize",
    "run_onnx",
    "run_tflite",
    "spread_depthwise_channels",
    "sqnr_by_kind",
    "tflite_ops",
    "to_onnx",
    "to_tflite",
]


def __getattr__(name: str) -> Any:
    """Submodules not yet imported load on first access (PEP 562)."""
    return _lazy.submodule(__name__, __path__, globals(), name)


def __dir__() -> list[str]:
    return _lazy.listing(__path__, globals())
