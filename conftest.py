"""Test configuration: strict numerics everywhere (STYLE item 8)."""

import os

# Keras (used as a peer reference in the interop tests) must use the JAX backend;
# this has to be set before keras is first imported.
os.environ.setdefault("KERAS_BACKEND", "jax")

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")
