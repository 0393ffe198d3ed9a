"""CPU speed of the demo detector's backbone against a peer measured in the same run.

darknet_tiny (the CPU demo's backbone) vs keras.applications.MobileNetV2 (alpha 1.0), both
wrapped by `build_classifier` (GAP + 3-way softmax) at 320x320:
- inference, batch 1, `predict_on_batch` (ms per image);
- training, batch 8, `train_on_batch` (images per second).
Usage: .venv/bin/python benchmarks/bench_backbones.py [--side 320] [--repeats 20]
"""

import argparse

import keras
import numpy as np
from timing import median_seconds

from detseg.heads.classifier import build_classifier

CANDIDATES = {
    "darknet_tiny": {"name": "darknet_tiny"},
    "darknet_tiny w0.5": {"name": "darknet_tiny", "width": 0.5},
    "resnet18": {"name": "resnet18"},
    "peer: applications:MobileNetV2": {"name": "applications:MobileNetV2"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=320)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    one = rng.integers(0, 256, (1, args.side, args.side, 3), dtype=np.uint8)
    batch = rng.integers(0, 256, (8, args.side, args.side, 3), dtype=np.uint8)
    labels = np.arange(8) % 3
    results = {}
    for label, spec in CANDIDATES.items():
        spec = dict(spec)
        model = build_classifier(spec.pop("name"), (args.side, args.side, 3), 3, **spec)
        model.compile(keras.optimizers.SGD(0.01), "sparse_categorical_crossentropy")
        infer = median_seconds(lambda m=model: m.predict_on_batch(one), args.repeats)
        train = median_seconds(
            lambda m=model: m.train_on_batch(batch, labels), max(3, args.repeats // 4)
        )
        results[label] = (model.count_params(), infer * 1000, 8 / train)
    peer = results["peer: applications:MobileNetV2"]
    print(f"backend {keras.backend.backend()}, side {args.side}")
    print(
        f"{'model':32s} {'params':>10s} {'infer ms':>9s} {'x peer':>7s} {'train img/s':>12s} {'x peer':>7s}"
    )
    for label, (params, ms, ips) in results.items():
        print(
            f"{label:32s} {params:10,d} {ms:9.1f} {peer[1] / ms:7.2f} {ips:12.1f} {ips / peer[2]:7.2f}"
        )


if __name__ == "__main__":
    main()
