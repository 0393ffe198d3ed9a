"""One fully convolutional pass versus classifying every window, on the same image, in one run.

The window classifier of `configs/shapes_fcn.yaml` (random weights: the speed does not depend
on them) is converted with `to_fully_convolutional` and run once over a whole image; the
naive reference crops every window at the network's total stride and classifies the crops,
one model call per window and in batches of 256. The probability grids are compared: equal
with `padding: valid`; with "same" padding the FCN's cells also see pixels around each window
(and its grid reaches the image border), which is why they differ. Usage:
.venv/bin/python benchmarks/bench_fcn.py [--config C] [--size 240x320] [--repeats 5]
"""

from __future__ import annotations

import argparse

import keras
import numpy as np
from timing import median_seconds

from detseg.config import load_config
from detseg.heads.fcn import naive_sliding_windows, to_fully_convolutional, total_stride
from detseg.quiet import start_backend_quietly
from detseg.tasks import TASKS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/shapes_fcn.yaml")
    parser.add_argument("--size", default="240x320", help="image HEIGHTxWIDTH")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    start_backend_quietly()
    cfg = load_config(args.config)
    classifier = TASKS[cfg.model.kind].build_model(cfg, 3)
    fcn = to_fully_convolutional(classifier)
    height, width = (int(v) for v in args.size.split("x"))
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    stride = total_stride(fcn)
    grid = keras.ops.convert_to_numpy(fcn(image[None], training=False))[0]
    windows = grid.shape[0] * grid.shape[1]

    fcn_s = median_seconds(lambda: fcn(image[None], training=False), args.repeats)
    batched_s = median_seconds(lambda: naive_sliding_windows(classifier, image, stride, 256), max(1, args.repeats // 2))
    one_by_one_s = median_seconds(lambda: naive_sliding_windows(classifier, image, stride, 1), 1)
    reference = naive_sliding_windows(classifier, image, stride, 256)
    print(
        f"backend {keras.backend.backend()}, {cfg.model.backbone} window {cfg.model.input_size} px, "
        f"padding {cfg.model.padding}, image {height}x{width}, stride {stride}, {windows} windows"
    )
    rows, cols = min(grid.shape[0], reference.shape[0]), min(grid.shape[1], reference.shape[1])
    difference = np.abs(grid[:rows, :cols] - reference[:rows, :cols]).max()
    print(
        f"  grids: FCN {grid.shape[:2]}, naive {reference.shape[:2]}; max |FCN - naive| probability "
        f"on common cells {difference:.2e} (0 up to float error with padding: valid)"
    )
    print(f"  FCN, one pass                 {fcn_s * 1000:9.1f} ms")
    print(f"  naive, windows batched by 256 {batched_s * 1000:9.1f} ms  ({batched_s / fcn_s:.1f}x the FCN's time)")
    print(f"  naive, one call per window    {one_by_one_s * 1000:9.1f} ms  ({one_by_one_s / fcn_s:.1f}x the FCN's time)")


if __name__ == "__main__":
    main()
