"""What every worker of bench_peers.py shares: the timing of training batches and of calls,
and the JSON row each one prints. Imports nothing but NumPy, so the peers' environment
(.venv-peers) runs it without detseg."""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]

WARMUP_BATCHES = 3
"""Training batches left out of the timing (graph tracing, XLA compilation, loader start)."""


class BatchClock:
    """Times of the ends of training batches; `images_per_second` from the median interval
    after the warm-up (robust to epoch boundaries, where validation or loader restarts fall)."""

    def __init__(self, batch: int):
        self.batch, self.ends = batch, []

    def tick(self) -> None:
        self.ends.append(time.perf_counter())

    @property
    def timed(self) -> int:
        return max(0, len(self.ends) - WARMUP_BATCHES - 1)

    def images_per_second(self) -> float:
        intervals = np.diff(self.ends[WARMUP_BATCHES:])
        if not len(intervals):
            raise RuntimeError(f"only {len(self.ends)} batches ran; need more than {WARMUP_BATCHES + 1}")
        return self.batch / float(np.median(intervals))


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    """Median milliseconds of `fn()` over `repeats` calls after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def emit(rows: list[dict[str, Any]]) -> None:
    """The worker's answer: one JSON line, last on stdout (the parent reads the last line)."""
    sys.stdout.write("\n" + json.dumps(rows) + "\n")
    sys.stdout.flush()


def module_from_repo(relative: str) -> ModuleType:
    """A self-contained module of this repository loaded from its file, without importing the
    package around it (the peers' environment lacks detseg's dependencies)."""
    spec = importlib.util.spec_from_file_location(Path(relative).stem, REPO / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
