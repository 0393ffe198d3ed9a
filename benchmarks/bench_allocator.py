"""Training speed on each memory allocator the `detseg` command can start on, in one run.

Each allocator runs the same workload in a fresh process: a config's model and real training
loader (augmentation and targets, its workers), one warm-up epoch of `--steps` steps, then
one timed epoch of `--steps` steps through `fit`. Reported per step: wall milliseconds, kernel
(system) CPU seconds and minor page faults, and the speed-up over glibc's default malloc.
Usage: .venv/bin/python benchmarks/bench_allocator.py [--config C]... [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

from detseg.allocator import GLIBC_TUNABLES, MARKER, find_tcmalloc

DEFAULT_CONFIGS = ("configs/shapes_yolov3_tiny.yaml", "configs/membrane_unet.yaml")


def allocators() -> dict[str, dict[str, str]]:
    """Environment additions of each allocator available here; glibc's default first."""
    found = {"glibc default": {MARKER: "system"}}
    found["glibc tuned"] = {MARKER: "glibc-tuned", "GLIBC_TUNABLES": GLIBC_TUNABLES}
    library = find_tcmalloc()
    if library:
        found["tcmalloc"] = {MARKER: "tcmalloc", "LD_PRELOAD": library}
    return found


def measure(config: str, steps: int) -> dict[str, float]:
    """Per-step wall ms, system CPU s and minor faults of one `fit` epoch (in this process)."""
    import keras

    from detseg.config import load_config
    from detseg.quiet import start_backend_quietly
    from detseg.tasks import task_for

    start_backend_quietly()
    cfg = load_config(config, {"train.time_limit": None})
    task = task_for(cfg)
    data = task.load_data(cfg, "train")
    cfg = task.prepare(cfg, data)
    model = task.build_model(cfg, len(task.class_names(data)))
    task.compile(model, keras.optimizers.AdamW(cfg.train.lr))
    loader = task.train_loader(cfg, model, data)
    steps = min(steps, len(loader))
    model.fit(loader, epochs=1, steps_per_epoch=steps, verbose=0)
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    model.fit(loader, epochs=1, steps_per_epoch=steps, verbose=0)
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    return {
        "ms_per_step": 1000 * wall / steps,
        "system_s_per_step": (after.ru_stime - before.ru_stime) / steps,
        "faults_per_step": (after.ru_minflt - before.ru_minflt) / steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", help="config to train (repeatable)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    configs = args.config or list(DEFAULT_CONFIGS)
    if args.measure:
        print(json.dumps(measure(configs[0], args.steps)))
        return
    for config in configs:
        print(f"{config}, {args.steps} steps of fit after a warm-up epoch")
        base = None
        for name, extra in allocators().items():
            env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "GLIBC_TUNABLES")}
            cmd = [sys.executable, __file__, "--measure", "--config", config, "--steps", str(args.steps)]
            out = subprocess.run(cmd, env={**env, **extra}, check=True, capture_output=True, text=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            base = base or row["ms_per_step"]
            print(
                f"  {name:14s} {row['ms_per_step']:8.0f} ms/step  system {row['system_s_per_step']:5.2f} s/step"
                f"  {row['faults_per_step']:9.0f} faults/step  {base / row['ms_per_step']:.2f}x"
            )


if __name__ == "__main__":
    main()
