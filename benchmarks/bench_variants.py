"""Training-step speed of detector config variants, interleaved in one process (paired figures).

Each variant is a comma-separated list of `key=value` overrides of `--config` ("" for the config
as it is). Every variant gets its own model (compiled as `bench_train.py` compiles it) and its own
ready batches from the training loader; after 3 warm-up steps each, the timed rounds run one
`train_on_batch` of every variant in turn. A machine that slows down or speeds up during the run
then slows every variant alike, so the ratios to the first variant hold where separate runs
differ by 10% (issue 16: the cost of the distribution-focal head's bins).
Usage: .venv/bin/python benchmarks/bench_variants.py [--config configs/bccd_yolov3.yaml]
       [--rounds 15] VARIANT [VARIANT ...]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from bench_train import build_detector

from detseg.config import load_config, parse_override
from detseg.flops import gflops
from detseg.quiet import start_backend_quietly

_WARM_UP = 3
_BATCHES = 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/bccd_yolov3.yaml")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("variants", nargs="+", help='overrides "k=v,k=v"; "" for the config as it is')
    args = parser.parse_args()
    start_backend_quietly()
    models, batches = [], []
    for variant in args.variants:
        overrides = [item for item in variant.split(",") if item]
        cfg = load_config(args.config, dict(parse_override(item) for item in overrides))
        model, loader, _ = build_detector(cfg)
        ready = [loader[i] for i in range(min(_BATCHES, len(loader)))]
        for i in range(_WARM_UP):
            model.train_on_batch(*ready[i % len(ready)])
        models.append(model)
        batches.append(ready)
    seconds = [[] for _ in models]
    for step in range(args.rounds):
        for model, ready, times in zip(models, batches, seconds, strict=True):
            start = time.perf_counter()
            model.train_on_batch(*ready[step % len(ready)])
            times.append(time.perf_counter() - start)
    steps = [float(np.median(times)) for times in seconds]
    rates = [len(ready[0][0]) / step for ready, step in zip(batches, steps, strict=True)]
    print(f"{args.config}: {args.rounds} interleaved rounds, median step of each variant")
    for variant, model, step, rate in zip(args.variants, models, steps, rates, strict=True):
        print(
            f"  {variant or '(as configured)':50s} {gflops(model):5.2f} GFLOPs  {step * 1000:6.0f} ms"
            f"  {rate:6.2f} img/s  {rate / rates[0]:.3f}x"
        )


if __name__ == "__main__":
    main()
