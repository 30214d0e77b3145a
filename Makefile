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
	@# The "native" CPU depthwise kernel: C++ compiled for this machine into the user's
	@# cache (sepconv_jax.kernels.native.cache_dir); without a compiler "auto" uses "shift".
	$(BIN)/python -m sepconv_jax.kernels.native || true
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
# is installed and nothing comes from the network. benchmarks/device_check.py runs, in
# this order, each step in its own process under a hard time limit, each writing its
# results under $(DEVICE_OUT)/<step>/ and its log to $(DEVICE_OUT)/<step>.log before
# the next starts:
#   1. fused (80 s): the fused separable kernel against the unfused pair;
#   2. models (225 s): MobileNetV2 and EfficientNet-B0 training steps, bfloat16 and
#      float32, batch 256 and 64, with "auto", "xla" and "pallas";
#   3. profile (45 s): the MobileNetV2 bfloat16 step's device time per kind of op;
#   4. layers (90 s): the depthwise layers table against PyTorch's CUDA kernel;
#   5. tests (40 s): the tests marked accelerator.
# 480 s in all, on one H100/H200. `make device-check DRY_RUN=1` runs the same steps at
# tiny sizes on any machine (Pallas in interpret mode on CPU) and prints each step's
# planned device budget beside the time it took there.
DEVICE_PYTHON ?= python3
DEVICE_OUT ?= benchmarks/results/gpu
DEVICE_ENV = PYTHONPATH=$(CURDIR) XLA_PYTHON_CLIENT_PREALLOCATE=false

device-check:
	$(DEVICE_ENV) $(DEVICE_PYTHON) benchmarks/device_check.py --out $(DEVICE_OUT) \
		$(if $(DRY_RUN),--dry-run)

# The Pallas kernels' block-size sweep on the same GPU.
device-tune:
	$(DEVICE_ENV) $(DEVICE_PYTHON) benchmarks/pallas_tune.py --out $(DEVICE_OUT)/sweep --budget 240

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
