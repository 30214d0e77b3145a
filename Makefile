# The two commands of the README's Quick start: `make demo` and `make test`.
# Both build .venv on first use with whatever `python3` is on PATH (3.11 or newer).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# PyTorch, torchvision and timm are test-only peers. timm imports torchvision, and the
# torchvision wheels on the package index load their operators only with the CUDA build
# of torch (the CPU-only torch 2.13 wheel cannot), so the pins are the CUDA builds of
# 2.14.1 / 0.29.1; they run on the CPU here.
TORCH ?= torch==2.14.1
TORCHVISION ?= torchvision==0.29.1

.PHONY: demo test lint typecheck format bench device-check device-tune clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "sepconv_jax needs Python 3.11 or newer, found " + sys.version' 
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@# Install them only where pip would take the pinned wheels from this machine's disk
	@# (find-links or a local file:// index, which `pip download --no-index` cannot see),
	@# never a multi-GB download; timm itself is small. pip's dry-run report says where
	@# each wheel would come from.
	@if $(BIN)/python -m pip install --dry-run --quiet --no-deps --ignore-installed --report - "$(TORCH)" "$(TORCHVISION)" 2>/dev/null \
		| $(BIN)/python -c 'import json, sys; wheels = json.load(sys.stdin)["install"]; sys.exit(not wheels or not all(w["download_info"]["url"].startswith("file:") for w in wheels))'; then \
		echo "installing $(TORCH), $(TORCHVISION) and timm from local wheels for the PyTorch and timm tests"; \
		$(BIN)/python -m pip install --quiet "$(TORCH)" "$(TORCHVISION)" -e ".[timm]"; \
	else \
		echo "no local wheels for $(TORCH) and $(TORCHVISION): the PyTorch and timm tests will be skipped"; \
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
