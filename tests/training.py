"""Compiling a model for a test's own `fit`, as `detseg train` does."""

from __future__ import annotations

import keras


def compile_built(model: keras.Model, optimizer: keras.optimizers.Optimizer, **options) -> None:
    """Compile `model` and build its optimizer at once, as `detseg train` does: TensorFlow
    traces a train step that creates the optimizer's variables twice, and a second trace of a
    detector costs seconds."""
    model.compile(optimizer=optimizer, **options)
    model.optimizer.build(model.trainable_variables)
