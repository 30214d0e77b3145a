"""Export to ONNX and LiteRT (TFLite), and int8 post-training quantization.

Not imported by ``import sepconv_jax``; it loads when imported. The exporters need
extras: ``pip install "sepconv-jax[export]"`` for ONNX (``jax2onnx``, ``onnx``,
``onnxruntime``) and ``"sepconv-jax[litert]"`` for LiteRT (``tensorflow-cpu``,
``ai-edge-litert``); quantization in JAX needs neither.
"""

from sepconv_jax.export.fold import fold_batch_norm as fold_batch_norm
from sepconv_jax.export.onnx import conv_groups as conv_groups
from sepconv_jax.export.onnx import op_counts as op_counts
from sepconv_jax.export.onnx import run_onnx as run_onnx
from sepconv_jax.export.onnx import to_onnx as to_onnx

__all__ = ["conv_groups", "fold_batch_norm", "op_counts", "run_onnx", "to_onnx"]
