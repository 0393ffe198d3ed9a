"""TensorBoard image summaries of a run (the validation gallery), beside Keras's own TensorBoard
callback; TensorFlow's summary writer is the one TensorBoard reads, so this module imports it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

__all__ = ["tensorboard_images"]


def tensorboard_images(logdir: Path) -> Callable[[np.ndarray, int], None]:
    """A writer of RGB uint8 images as TensorBoard image summaries ("gallery") in `logdir`."""
    import tensorflow as tf

    writer = tf.summary.create_file_writer(str(logdir))

    def write(image: np.ndarray, step: int) -> None:
        with writer.as_default():
            tf.summary.image("gallery", image[None], step=step)
        writer.flush()

    return write
