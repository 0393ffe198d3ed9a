"""Timing helper shared by the benchmark scripts (imported as `timing`: each script's folder is
on `sys.path` when it runs)."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall seconds of `fn()` over `repeats` calls, after one warm-up call (compilation)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def consume_like_fit(batches) -> None:
    """One epoch of a `keras.utils.PyDataset` consumed as `model.fit` consumes it (Keras's
    `PyDatasetAdapter`, with the dataset's own workers)."""
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

    adapter = PyDatasetAdapter(batches, shuffle=False)
    adapter.on_epoch_begin()
    for _ in adapter.get_numpy_iterator():
        pass
    adapter.on_epoch_end()
