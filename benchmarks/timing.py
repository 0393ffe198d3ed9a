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
