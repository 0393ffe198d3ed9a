"""Feeding the model: uint8 batches against float32 ones, for the shapes demo detector.

Model and data: configs/shapes_yolov3_tiny.yaml (anchors fitted on its train split, which is
generated on first use) and its training loader (augmentation, target encoding, the
config's workers). For batches of uint8 pixels (what the loaders send; the model scales
them inside) and of the same pixels as float32 (4x the bytes, what loaders sent before),
in the same run, images per second of:

- the loader alone, iterated as `fit` iterates it (Keras's `PyDatasetAdapter`);
- `fit` over the loader;
- `fit` over ready batches (the same batches computed beforehand and held in memory: the
  rate of the model alone, the most a loader could let `fit` reach).

Ratios: loader / ready (how many times the training rate the loader delivers; DESIGN.md
asks for several), fit over the loader / ready (the share of the model's rate that training
keeps), and uint8 / float32 for each row. On a CPU the host -> device copy is a memcpy, so
the dtype matters little here; on an accelerator it is the 4x smaller transfer.

    .venv/bin/python benchmarks/bench_input.py [--steps 20] [--repeats 2] [--set key=value ...]
    .venv/bin/python benchmarks/bench_input.py --quick    # seconds: checks the script runs

`--quick` takes a few tiny images, a narrow one-level model and (under TensorFlow) eager,
uncompiled steps, so its figures mean nothing; it is what the test suite runs.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time

import keras
from timing import consume_like_fit

from detseg.config import load_config, parse_override
from detseg.data import load_split, training_loader
from detseg.heads import build_yolo
from detseg.quiet import start_backend_quietly
from detseg.tasks.detect import anchor_list, fit_config_anchors

DTYPES = ("uint8", "float32")
QUICK = {  # a few tiny images and a narrow model: the run takes seconds (the test's)
    "data.shapes.num_train": 8,
    "data.shapes.num_val": 1,
    "data.shapes.image_size": 64,
    "data.shapes.min_size": 12,
    "data.shapes.max_size": 32,
    "data.shapes.video_frames": 0,
    "data.workers": 0,
    "model.input_size": 64,
    "model.backbone_width": 0.125,
    "model.yolo.width": 0.125,
    "model.yolo.levels": ["P5"],
    "train.batch_size": 4,
}


class Batches(keras.utils.PyDataset):
    """`steps` batches of `source` (a loader or a list of ready batches), images as `dtype`.

    Over a loader each batch is made when asked (with the loader's workers); over a list it
    is only the cast, done beforehand for ready batches so that `fit` gets the arrays as
    they are.
    """

    def __init__(self, source, steps: int, dtype: str, workers: int = 1):
        super().__init__(workers=workers)
        self.source, self.steps, self.dtype = source, steps, dtype

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, index: int):
        images, targets = self.source[index]
        return images.astype(self.dtype, copy=False), targets

    def on_epoch_end(self) -> None:
        if hasattr(self.source, "on_epoch_end"):
            self.source.on_epoch_end()



def _best_rate(run, images: int, repeats: int) -> float:
    """Images per second of the fastest of `repeats` calls of `run()`."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return images / best


def measure(cfg, steps: int, repeats: int, eager: bool = False) -> dict[str, dict[str, float]]:
    """{row: {dtype: img/s}} for the three rows of the module docstring; `eager` runs the
    training step uncompiled (`--quick`: no compile time, figures that mean nothing)."""
    train_ds = load_split(cfg.data, "train")
    anchors = anchor_list(fit_config_anchors(cfg, dataset=train_ds))
    model = build_yolo(cfg.model, len(train_ds.class_names), anchors, cfg.predict)
    model.compile(optimizer=keras.optimizers.AdamW(cfg.train.lr), run_eagerly=eager)
    loader = training_loader(cfg, train_ds, model.make_target_encoder())
    steps = min(steps, len(loader))
    ready = [loader[i] for i in range(steps)]
    images = steps * cfg.train.batch_size
    workers = max(1, cfg.data.workers)

    def fit(batches: Batches) -> None:
        model.fit(batches, epochs=1, shuffle=False, verbose=0)

    rows: dict[str, dict[str, float]] = {}
    for dtype in DTYPES:
        in_memory = [(x.astype(dtype), y) for x, y in ready]
        fit(Batches(in_memory, 1, dtype))  # compiles the step for this input dtype
        rates = {
            "loader alone": lambda d=dtype: consume_like_fit(Batches(loader, steps, d, workers)),
            "fit over the loader": lambda d=dtype: fit(Batches(loader, steps, d, workers)),
            "fit over ready batches": lambda d=dtype, m=in_memory: fit(Batches(m, steps, d)),
        }
        for row, run in rates.items():
            rows.setdefault(row, {})[dtype] = _best_rate(run, images, repeats)
    return rows


def report(rows: dict[str, dict[str, float]], header: str) -> str:
    """The table (img/s per dtype and uint8 / float32) and the ratios between rows."""
    lines = [header, f"{'img/s':28s} {'uint8':>9s} {'float32':>9s} {'uint8/f32':>10s}"]
    for row, rates in rows.items():
        lines.append(
            f"{row:28s} {rates['uint8']:9.1f} {rates['float32']:9.1f} "
            f"{rates['uint8'] / rates['float32']:10.2f}"
        )
    ready = rows["fit over ready batches"]
    for dtype in DTYPES:
        lines.append(
            f"{dtype}: loader / ready {rows['loader alone'][dtype] / ready[dtype]:.2f}x, "
            f"fit over the loader / ready {rows['fit over the loader'][dtype] / ready[dtype]:.2f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="configs/shapes_yolov3_tiny.yaml")
    parser.add_argument("--steps", type=int, default=20, help="batches per measured epoch")
    parser.add_argument("--repeats", type=int, default=2, help="best of this many epochs")
    parser.add_argument(
        "--quick", action="store_true", help="tiny data and model (the test)"
    )
    parser.add_argument("--set", action="append", default=[], help="config override key=value")
    args = parser.parse_args(argv)
    start_backend_quietly()
    overrides = dict(parse_override(s) for s in args.set)
    scratch = None
    if args.quick:
        scratch = tempfile.mkdtemp(prefix="bench_input_")
        overrides = {**QUICK, "data.cache_dir": scratch, **overrides}
        args.steps, args.repeats = min(args.steps, 2), 1
    try:
        cfg = load_config(args.config, overrides)
        # JAX dispatches eager ops one by one, slower than compiling even a tiny step.
        eager = args.quick and keras.backend.backend() == "tensorflow"
        rows = measure(cfg, args.steps, args.repeats, eager=eager)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    bytes_per_batch = cfg.train.batch_size * cfg.model.input_size**2 * 3
    print(
        report(
            rows,
            f"backend {keras.backend.backend()}, {cfg.model.input_size} px, batch "
            f"{cfg.train.batch_size}, {args.steps} steps, {cfg.data.workers} workers; one batch "
            f"is {bytes_per_batch / 2**20:.2f} MiB as uint8, {4 * bytes_per_batch / 2**20:.2f} "
            "MiB as float32",
        )
    )
    return rows


if __name__ == "__main__":
    main()
