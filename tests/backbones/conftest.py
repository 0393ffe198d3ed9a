"""Shared fixture for the backbone tests."""

import keras
import pytest


@pytest.fixture
def forward():
    """Run a model on a batch and return NumPy outputs (same structure as the model's).

    TensorFlow runs eagerly at once; JAX's eager mode dispatches op by op (minutes for a
    GoogLeNet), so under JAX the whole graph is compiled once with `predict_on_batch`.
    """

    def run(model, x):
        if keras.backend.backend() == "jax":
            return model.predict_on_batch(x)
        return keras.tree.map_structure(keras.ops.convert_to_numpy, model(x))

    return run
