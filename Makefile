# Each target creates .venv when it is missing or pyproject.toml changed since the last install.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Tests and benchmarks run on the allocator the `detseg` command picks (detseg/allocator.py).
TUNED := $(BIN)/python -m detseg.allocator

.PHONY: demo test test-tf test-jax test-slow bench lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,onnx]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/detseg demo configs/shapes_yolov3_tiny.yaml

# The backend is fixed at import time, so the JAX subset runs in its own process.
test: test-tf test-jax

test-tf: $(STAMP)
	$(TUNED) $(BIN)/python -m pytest -m "not slow" -n 2

test-jax: $(STAMP)
	KERAS_BACKEND=jax $(TUNED) $(BIN)/python -m pytest -m "jax and not slow" -n 2

test-slow: $(STAMP)
	$(TUNED) $(BIN)/python -m pytest -m slow

bench: $(STAMP)
	for f in benchmarks/bench_*.py; do $(TUNED) $(BIN)/python $$f || exit 1; done

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) runs .pytest_cache
