# The two commands of the README's Quick start: `make demo` and `make test`.
# Both build .venv on first use with whatever `python3` is on PATH (3.11 or newer).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH ?= torch==2.13.0

.PHONY: demo test lint typecheck format bench clean

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

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
