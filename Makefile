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

test: lint typecheck
	$(BIN)/python -m pytest

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/sepconv-jax bench

# On a machine with a GPU (or TPU) whose python3 already has jax (with its CUDA
# plugin), flax, optax, chex and torch: nothing is installed, the package runs from
# the checkout. The accelerator tests (every impl against float64 on the device),
# then the benchmark suite at batch 64: depthwise layers (xla, shift, pallas,
# PyTorch CUDA), separable layers (unfused and fused), and MobileNetV2 and
# EfficientNet-B0 training steps. Budgeted to finish within 8 minutes on one H100;
# results (JSON, Markdown, PNG, the device named inside) go to $(DEVICE_OUT).
DEVICE_PYTHON ?= python3
DEVICE_OUT ?= benchmarks/results/gpu
DEVICE_ENV = PYTHONPATH=$(CURDIR) XLA_PYTHON_CLIENT_PREALLOCATE=false

device-check:
	mkdir -p $(DEVICE_OUT)
	-$(DEVICE_ENV) $(DEVICE_PYTHON) -m pytest -q -p no:cacheprovider -m accelerator \
		-W default::DeprecationWarning tests/test_accelerator.py tests/test_separable_op.py \
		2>&1 | tee $(DEVICE_OUT)/accelerator-tests.txt
	$(DEVICE_ENV) $(DEVICE_PYTHON) -m sepconv_jax.cli bench --batch 64 \
		--dtype float32 bfloat16 --impls xla shift pallas --fused --min-time 0.05 \
		--max-reps 5 --budget 210 --model-architectures MobileNetV2 EfficientNetB0 \
		--model-impls xla pallas --model-batch 64 --model-dtype bfloat16 --out $(DEVICE_OUT)

# The Pallas kernels' block-size sweep and the fused kernel against the unfused
# pair, on the same GPU (each under its own budget, about 4 minutes together).
device-tune:
	$(DEVICE_ENV) $(DEVICE_PYTHON) benchmarks/pallas_tune.py --out $(DEVICE_OUT)/tune --budget 150
	$(DEVICE_ENV) $(DEVICE_PYTHON) benchmarks/fused_tune.py --out $(DEVICE_OUT)/fused --budget 90

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
