"""What every worker of bench_peers.py shares: the timing of training batches and of calls,
and the JSON row each one prints. Imports nothing but NumPy, so the peers' environment
(.venv-peers) runs it without detseg."""

from __future__ import annotations

import argparse
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
sys.path.insert(0, str(REPO / "benchmarks"))
from timing import median_seconds  # noqa: E402

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


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median milliseconds of `fn()` over `repeats` calls, after a warm-up call (timing.py)."""
    return median_seconds(fn, repeats) * 1000


def spec_from_argv(doc: str) -> dict[str, Any]:
    """The worker's `--spec` JSON: what to measure (see bench_peers.py)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--spec", required=True, help="JSON: what to measure (see bench_peers.py)")
    return json.loads(parser.parse_args().spec)


def measure(tool: str, spec: dict[str, Any], train_row, infer_row, video_row) -> list[dict[str, Any]]:
    """One tool's rows of every (size, batch) of `spec["train"]` and size of its "infer" and "video"."""
    rows = [train_row(spec, size, batch) for size, batch in spec.get("train", [])]
    rows += [infer_row(spec, size) for size in spec.get("infer", [])]
    rows += [video_row(spec, size) for size in spec.get("video", [])]
    return [{"tool": tool, **row} for row in rows]


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
