"""Test configuration: strict numerics everywhere (STYLE item 8)."""

import os

# Keras (the peer reference of the interop and model-import tests) runs on the JAX
# backend; this has to be set before keras is first imported.
os.environ["KERAS_BACKEND"] = "jax"

import importlib.util

# TensorFlow (the LiteRT export tests) and Triton (imported by PyTorch, under timm and
# torchvision) each load their own LLVM; loading libtriton after TensorFlow crashes
# the process (a segmentation fault), loading it first does not. A test process may
# run both, so Triton, where installed, is loaded before anything else.
if importlib.util.find_spec("triton") is not None:
    import triton  # noqa: F401

import jax
from hypothesis import settings

jax.config.update("jax_numpy_rank_promotion", "raise")

# In CI, hypothesis draws the same examples on every run, so a red run can be replayed.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
