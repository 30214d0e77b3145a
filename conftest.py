"""Test configuration: strict numerics everywhere (STYLE item 8)."""

import os

# Keras (the peer reference of the interop and model-import tests) runs on the JAX
# backend; this has to be set before keras is first imported.
os.environ["KERAS_BACKEND"] = "jax"

import jax
from hypothesis import settings

jax.config.update("jax_numpy_rank_promotion", "raise")

# In CI, hypothesis draws the same examples on every run, so a red run can be replayed.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
