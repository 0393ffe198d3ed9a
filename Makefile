# Each target creates .venv when it is missing or pyproject.toml changed since the last install.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Tests and benchmarks run on the allocator the `detseg` command picks (detseg/allocator.py).
TUNED := $(BIN)/python -m detseg.allocator

.PHONY: demo test test-tf test-jax test-slow bench bench-peers lint clean

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
	$(TUNED) $(BIN)/python -m pytest -m "not slow" -n 2 --dist loadfile

test-jax: $(STAMP)
	KERAS_BACKEND=jax $(TUNED) $(BIN)/python -m pytest -m "jax and not slow" -n 2 --dist loadfile

test-slow: $(STAMP)
	$(TUNED) $(BIN)/python -m pytest -m slow
	KERAS_BACKEND=jax $(TUNED) $(BIN)/python -m pytest -m "jax and slow"

bench: $(STAMP)
	for f in benchmarks/bench_*.py; do $(TUNED) $(BIN)/python $$f || exit 1; done

# The peers (Ultralytics with a torch + torchvision pair that import together, KerasCV beside
# TensorFlow) live in their own environment, out of detseg's install (about 8 GB).
PEERS := .venv-peers
$(PEERS)/.installed:
	test -x $(PEERS)/bin/python || $(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/python -m pip install --quiet --upgrade pip
	$(PEERS)/bin/python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1" "ultralytics>=8.3" \
		"keras-cv==0.9.0" "tensorflow==2.21.0" "keras>=3.10" opencv-python-headless
	touch $(PEERS)/.installed

bench-peers: $(STAMP) $(PEERS)/.installed
	$(TUNED) $(BIN)/python benchmarks/bench_peers.py --json runs/bench_peers.json

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) $(PEERS) runs .pytest_cache
