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

.PHONY: demo test lint typecheck format bench clean

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

test: lint typecheck
	$(BIN)/python -m pytest

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/sepconv-jax bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
