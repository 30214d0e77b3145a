# The two commands of the README's Quick start: `make demo` and `make test`.
# Both build .venv on first use with whatever `python3` is on PATH (3.11 or newer).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH ?= torch==2.13.0

.PHONY: demo test lint typecheck format bench device-check device-tune clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "sepconv_jax needs Python 3.11 or newer, found " + sys.version' 
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@# PyTorch is a test-only peer. Install it only where a CPU wheel of the pinned
	@# version is on hand locally (pip's find-links), never a multi-GB CUDA download.
	@if $(BIN)/python -m pip download --quiet --no-index --no-deps -d "$$(mktemp -d)" "$(TORCH)" >/dev/null 2>&1; then \
		echo "installing $(TORCH) from the local wheel for the PyTorch parity tests"; \
		$(BIN)/python -m pip install --quiet "$(TORCH)"; \
	else \
		echo "no local wheel for $(TORCH): the PyTorch parity tests will be skipped"; \
	fi
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/sepconv-jax demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# Two workers: CI's machine has two cores, and the suite is independent per test.
test: lint typecheck
	$(BIN)/python -m pytest -n 2 --durations=20

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/sepconv-jax bench

# On a machine with a GPU, the package runs from the checkout (PYTHONPATH=.), nothing
# is installed and nothing comes from the network. In the order that matters most
# when time runs short (each step writes its own results under $(DEVICE_OUT), with
# the device named inside, before the next starts):
#   1. the MobileNetV2/EfficientNet-B0 depthwise layers at batch 64 (tune/): xla,
#      shift and pallas against PyTorch's CUDA kernel, forward and forward+backward,
#      bfloat16 and float32;
#   2. MobileNetV2 and EfficientNet-B0 training steps at batch 64 (models/), with
#      "auto", "xla" and "pallas";
#   3. the fused separable kernel against the unfused pair (fused/);
#   4. the tests marked accelerator (every impl against float64 on the device).
# About 8 minutes on one H100. The full `sepconv-jax bench` table (every column for
# every layer) compiles too much to fit in that time on a GPU; run it on its own.
DEVICE_PYTHON ?= python3
DEVICE_OUT ?= benchmarks/results/gpu
DEVICE_ENV = PYTHONPATH=$(CURDIR) XLA_PYTHON_CLIENT_PREALLOCATE=false

device-check:
	mkdir -p $(DEVICE_OUT)
	-$(DEVICE_ENV) $(DEVICE_PYTHON) benchmarks/pallas_tune.py --out $(DEVICE_OUT)/tune \
		--dtypes bfloat16 float32 --no-sweep --budget 200 > $(DEVICE_OUT)/tune.log 2>&1
	-$(DEVICE_ENV) $(DEVICE_PYTHON) -m sepconv_jax.cli bench --model-only \
		--model-architectures MobileNetV2 EfficientNetB0 --model-impls auto xla pallas \
		--model-batch 64 --model-dtype float32 --out $(DEVICE_OUT)/models \
		> $(DEVICE_OUT)/models.log 2>&1
	-$(DEVICE_ENV) $(DEVICE_PYTHON) benchmarks/fused_tune.py --out $(DEVICE_OUT)/fused \
		--budget 60 > $(DEVICE_OUT)/fused.log 2>&1
	-$(DEVICE_ENV) $(DEVICE_PYTHON) -m pytest -q -p no:cacheprovider -m accelerator \
		-W default::DeprecationWarning tests/test_accelerator.py tests/test_separable_op.py \
		> $(DEVICE_OUT)/accelerator-tests.txt 2>&1

# The Pallas kernels' block-size sweep on the same GPU.
device-tune:
	$(DEVICE_ENV) $(DEVICE_PYTHON) benchmarks/pallas_tune.py --out $(DEVICE_OUT)/sweep --budget 240

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
