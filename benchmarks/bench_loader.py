"""Data loader throughput on BCCD at 416 px, against a plain OpenCV loop measured in the same run.

Rows (images per second, best of `--repeats` passes over the split, and CPU ms per image):

- peer `cv2.imread + resize`: the least any loader must do, a plain loop reading each image
  and resizing it to 416x416 (no boxes, no augmentation, no batching);
- `DetectionLoader` without augmentation (evaluation batches: read, letterbox, encode);
- `DetectionLoader` with the default detection augmentation (`AugmentConfig()`: flip, affine,
  colour jitter), 0 workers and 2 workers, iterated the way `model.fit` does (Keras's
  `PyDatasetAdapter`, whose 2 workers are threads running `__getitem__` in parallel);
- the same with mosaic (p = 0.5), 2 workers.

Also timed: generating the default built-in shapes dataset (900 images at 320 px).

    .venv/bin/python benchmarks/bench_loader.py [--bccd DIR] [--split train] [--batch 16] [--repeats 2]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import cv2
from timing import consume_like_fit

from detseg.config import AugmentConfig, ShapesConfig
from detseg.data import DetectionLoader, build_augment, load_voc
from detseg.data.shapes import generate_shapes

SIZE = 416
DEFAULT_BCCD = Path(__file__).resolve().parents[2] / "shared" / "data" / "bccd"


def _measure(run, images: int, repeats: int) -> tuple[float, float]:
    """Images per second of the fastest of `repeats` calls of `run()`, and its CPU ms per image.

    CPU time (all threads of this process) tells the cost of the work itself when other
    processes share the cores and wall-clock rates drop.
    """
    best_wall, best_cpu = float("inf"), float("inf")
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        run()
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    return images / best_wall, 1000 * best_cpu / images


def _peer(paths: list[Path]) -> None:
    for path in paths:
        cv2.resize(cv2.imread(str(path)), (SIZE, SIZE))



def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bccd", type=Path, default=DEFAULT_BCCD)
    parser.add_argument("--split", default="train")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    dataset = load_voc(args.bccd, split=args.split)
    n = len(dataset)
    augment = build_augment(AugmentConfig())
    paths = [s.image_path for s in dataset.samples]
    _peer(paths[:16])  # warm the file cache for everyone

    def loader(**kwargs) -> DetectionLoader:
        return DetectionLoader(dataset, SIZE, args.batch, shuffle=True, seed=0, **kwargs)

    rows = [
        ("peer: cv2.imread + resize loop", lambda: _peer(paths)),
        ("loader, no augmentation, 0 workers", lambda: consume_like_fit(loader())),
        (
            "loader, default augmentation, 0 workers",
            lambda: consume_like_fit(loader(augment=augment)),
        ),
        (
            "loader, default augmentation, 2 workers",
            lambda: consume_like_fit(loader(augment=augment, workers=2)),
        ),
        (
            "loader, default augmentation + mosaic 0.5, 2 workers",
            lambda: consume_like_fit(loader(augment=augment, workers=2, mosaic_p=0.5)),
        ),
    ]
    results = {name: _measure(run, n, args.repeats) for name, run in rows}
    peer = results[rows[0][0]][0]
    print(
        f"BCCD {args.split}: {n} images (640x480) -> {SIZE}x{SIZE}, batch {args.batch}, best of {args.repeats}"
    )
    print(f"{'':55s} {'img/s':>8s} {'vs peer':>8s} {'CPU ms/img':>11s}")
    for name, (rate, cpu_ms) in results.items():
        print(f"{name:55s} {rate:8.1f} {rate / peer:8.2f} {cpu_ms:11.2f}")
    two, zero = results[rows[3][0]][0], results[rows[2][0]][0]
    print(f"2 workers vs 0 workers (default augmentation): {two / zero:.2f}x")

    cache = Path(tempfile.mkdtemp(prefix="bench_shapes_"))
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        generate_shapes(ShapesConfig(), cache)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        print(
            f"shapes dataset, 900 images at 320 px generated in {wall:.2f} s ({cpu:.2f} s of CPU)"
        )
    finally:
        shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
