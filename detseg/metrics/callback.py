"""A Keras callback that runs a model-level evaluation during training and puts its numbers
(for example `val_mAP`, `val_mAP50`, `val_mIoU`) into the epoch logs, so that History,
the progress bar, ModelCheckpoint and EarlyStopping placed after it see them."""

from __future__ import annotations

from collections.abc import Callable

import keras

from detseg.errors import DetsegError


class EvaluateCallback(keras.callbacks.Callback):
    """Call `evaluate_fn(model) -> {name: float}` after the first epoch, every `every`
    epochs, and after the last epoch; on the epochs in between, the last values are written
    again, so every epoch's logs carry every key.

    Place it before the callbacks that read the values:
    `callbacks=[EvaluateCallback(fn, every=2), keras.callbacks.ModelCheckpoint(path,
    monitor="val_mAP", mode="max", save_best_only=True)]`.
    """

    def __init__(self, evaluate_fn: Callable[[keras.Model], dict[str, float]], every: int = 1):
        super().__init__()
        if not callable(evaluate_fn):
            raise DetsegError(f"evaluate_fn must be callable, got {type(evaluate_fn).__name__}")
        if not isinstance(every, int) or every < 1:
            raise DetsegError(f"every must be a positive integer, got {every!r}")
        self.evaluate_fn = evaluate_fn
        self.every = every
        self.last: dict[str, float] = {}
        self.evaluated_epochs: list[int] = []

    def _due(self, epoch: int) -> bool:
        last_epoch = (self.params or {}).get("epochs")
        return not self.last or (epoch + 1) % self.every == 0 or epoch + 1 == last_epoch

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self._due(epoch):
            values = self.evaluate_fn(self.model)
            if not isinstance(values, dict):
                raise DetsegError(
                    f"evaluate_fn must return a dict of floats, got {type(values).__name__}"
                )
            self.last = {str(k): float(v) for k, v in values.items()}
            self.evaluated_epochs.append(epoch)
        if logs is not None:
            logs.update(self.last)

