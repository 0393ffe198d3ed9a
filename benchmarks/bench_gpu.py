"""GPU training throughput: the full-size YOLOv3 (Darknet-53) at 416 px, batch 64, mixed precision.

Model and training path: configs/voc_yolov3_darknet53.yaml as `detseg train` runs it (its task's
data, prepared config, model, loader with augmentation, optimizer and compile), with the mixed
precision policy `train.mixed_precision` picks (bfloat16 on a GPU of compute capability 8.0 or
later). VOC is not shipped: `--data` points the config at a Pascal VOC devkit folder (by default
BCCD, ../shared/data/bccd) and `--names` gives its classes. Every batch is full (the epoch's
remainder is dropped). Reported:

- img/s: batch / the median interval between batch ends after 3 warm-up batches (BatchClock;
  the batch-end callback waits for the step's loss, so an interval is a finished step);
- GFLOPs per image at the input size (2 x multiply-accumulates, `detseg.flops`);
- training TFLOP/s implied: 3 x forward FLOPs x img/s (forward, and twice that backward);
- that as a fraction of the chip's dense bf16 peak (`--peak-tflops`, H200: 989).

    KERAS_BACKEND=jax python benchmarks/bench_gpu.py [--steps 30] [--json OUT]
    python benchmarks/bench_gpu.py --quick [--json OUT]    # seconds on a CPU: checks it runs

`--quick` takes 128 px, batch 2, 3 timed steps, a width-reduced Darknet-tiny and float32 (its
figures mean nothing; it is what the test suite runs). Without `--quick` on a machine with no
GPU or TPU it says so and measures nothing (`make bench` runs every script here).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import keras

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE / "peers"))
from common import WARMUP_BATCHES, BatchClock  # noqa: E402

from detseg.config import Config, load_config, parse_override  # noqa: E402
from detseg.engine.precision import set_precision  # noqa: E402
from detseg.engine.train import make_optimizer  # noqa: E402
from detseg.flops import gflops  # noqa: E402
from detseg.quiet import start_backend_quietly  # noqa: E402
from detseg.tasks import task_for  # noqa: E402

CONFIG = REPO / "configs" / "voc_yolov3_darknet53.yaml"
BCCD = REPO.parent / "shared" / "data" / "bccd"
BCCD_NAMES = ["RBC", "WBC", "Platelets"]
H200_BF16_TFLOPS = 989.0
"""NVIDIA's dense (no sparsity) bfloat16 tensor-core peak of the H200 SXM."""
QUICK = {  # tiny: the run takes seconds on a CPU (the test's)
    "model.input_size": 128,
    "model.backbone": "darknet_tiny",
    "model.backbone_width": 0.125,
    "model.yolo.width": 0.125,
    "model.yolo.depth": 1,
    "train.batch_size": 2,
    "train.mixed_precision": False,
    "data.workers": 0,
}


def device_kind() -> str:
    """The training device as the backend names it (e.g. 'NVIDIA H200' under JAX)."""
    if keras.backend.backend() == "jax":
        import jax

        device = jax.devices()[0]
        return f"{device.platform}: {device.device_kind}"
    return keras.distribution.list_devices()[0]


def measure(cfg: Config, steps: int, peak_tflops: float, eager: bool = False) -> dict[str, Any]:
    """Training img/s of `fit` over the config's own loader over `steps` timed batches (after
    the warm-up), with the model's GFLOPs and the fraction of `peak_tflops` it implies;
    `eager` runs the steps uncompiled (`--quick`: no compile time, a figure that means nothing)."""
    task = task_for(cfg)
    policy = set_precision(cfg.train.mixed_precision)
    train_data = task.load_data(cfg, "train")
    cfg = task.prepare(cfg, train_data)
    model = task.build_model(cfg, len(cfg.data.names))
    loader = task.train_loader(cfg, model, train_data)
    loader.drop_remainder(cfg.train.batch_size)
    task.compile(model, make_optimizer(cfg.train, len(loader)))
    model.run_eagerly = eager
    batch = cfg.train.batch_size
    clock = BatchClock(batch)
    wanted = WARMUP_BATCHES + 1 + steps
    tick = keras.callbacks.LambdaCallback(on_train_batch_end=lambda index, logs: clock.tick())
    epochs, per_epoch = -(-wanted // len(loader)), min(wanted, len(loader))
    model.fit(
        loader, epochs=epochs, steps_per_epoch=per_epoch, shuffle=False, verbose=0, callbacks=[tick]
    )
    img_s = clock.images_per_second()
    per_image = gflops(model)
    train_tflops = 3 * per_image * img_s / 1e3
    return {
        "device": device_kind(), "backend": keras.backend.backend(), "policy": policy,
        "size": cfg.model.input_size, "batch": batch, "timed_batches": clock.timed,
        "img_s": img_s, "gflops": per_image, "train_tflops": train_tflops,
        "peak_tflops": peak_tflops, "fraction_of_peak": train_tflops / peak_tflops,
    }  # fmt: skip


def report(row: dict[str, Any]) -> str:
    """The measurement in a few lines."""
    return (
        f"{row['device']} ({row['backend']}, {row['policy']}), {row['size']} px, batch {row['batch']}, "
        f"{row['timed_batches']} timed batches\n"
        f"training: {row['img_s']:.1f} img/s; {row['gflops']:.2f} GFLOPs per image; "
        f"{row['train_tflops']:.1f} TFLOP/s implied (3 x forward), "
        f"{100 * row['fraction_of_peak']:.2f}% of {row['peak_tflops']:g} TFLOP/s dense bf16"
    )


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    """Measure and print (and write `--json`); the figures, or None where there is no
    accelerator to measure."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=str(CONFIG))
    parser.add_argument("--data", default=str(BCCD), help="a Pascal VOC devkit folder (data.root)")
    parser.add_argument("--names", nargs="+", default=BCCD_NAMES, help="the class names of --data")
    parser.add_argument("--size", type=int, default=416)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30, help="timed batches, after the warm-up")
    parser.add_argument(
        "--peak-tflops", type=float, default=H200_BF16_TFLOPS, help="the chip's dense bf16 peak"
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny size, batch and model on a CPU (the test)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--set", action="append", default=[], help="config override key=value")
    args = parser.parse_args(argv)
    start_backend_quietly()
    devices = keras.distribution.list_devices()
    if not args.quick and all(device.lower().startswith("cpu") for device in devices):
        print(
            f"bench_gpu: no accelerator among {devices}; nothing measured (--quick checks the script)"
        )
        return None
    overrides = {"data.root": args.data, "data.names": args.names, "model.input_size": args.size,
                 "train.batch_size": args.batch, "train.mixed_precision": True, "name": "bench_gpu"}  # fmt: skip
    if args.quick:
        overrides.update(QUICK)
        args.steps = 3
    overrides.update(parse_override(s) for s in args.set)
    # JAX dispatches eager ops one by one, slower than compiling even a tiny step.
    eager = args.quick and keras.backend.backend() == "tensorflow"
    row = measure(load_config(args.config, overrides), args.steps, args.peak_tflops, eager)
    print(report(row))
    if args.json:
        args.json.write_text(json.dumps(row, indent=1))
    return row


if __name__ == "__main__":
    main()
