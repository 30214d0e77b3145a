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


# ----------------------------------------------------------------------------- import errors
# The model-import tests (Keras, timm) keep the largest relative logit error of each
# model in their module's ``ERRORS``; the run ends by printing them. Under xdist each
# worker sends its share to the controller when it finishes.

_IMPORT_TEST_MODULES = ("test_keras_import", "test_timm_import")
_LOGIT_ERRORS: dict[str, float] = {}


def _collected_errors() -> dict[str, float]:
    import sys

    errors: dict[str, float] = {}
    for name, module in list(sys.modules.items()):
        short = name.rsplit(".", 1)[-1]
        if short in _IMPORT_TEST_MODULES:
            source = short.removeprefix("test_").removesuffix("_import")
            for case, error in getattr(module, "ERRORS", {}).items():
                errors[f"{source}: {case}"] = error
    return errors


def pytest_sessionfinish(session):
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker
        workeroutput["logit_errors"] = _collected_errors()
    else:
        _LOGIT_ERRORS.update(_collected_errors())


if importlib.util.find_spec("xdist") is not None:

    def pytest_testnodedown(node, error):
        _LOGIT_ERRORS.update(getattr(node, "workeroutput", {}).get("logit_errors", {}))


def pytest_terminal_summary(terminalreporter):
    if _LOGIT_ERRORS:
        terminalreporter.section("largest relative logit error per model import")
        for case, error in sorted(_LOGIT_ERRORS.items()):
            terminalreporter.write_line(f"{case}: {error:.1e}")
