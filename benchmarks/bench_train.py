"""Training and inference speed of the CPU demo detector, with peers measured in the same run.

Model: configs/shapes_yolov3_tiny.yaml (darknet_tiny + two-level YOLO head, 320 px), with
anchors fitted on the shapes training split.
- training, batch 16: `fit` over the real loader (augmentation + target encoding, the demo's
  workers), timed by the median interval between batch ends after the warm-up batches, so the
  tracing of `fit`'s step function and the loader's start are left out; vs `train_on_batch` on
  ready batches (the model alone) vs the loader alone; peer: keras.applications.MobileNetV2
  classifier `train_on_batch` at the same size and batch;
- inference, model + decode + NMS, boxes in original pixels: `Detector` at batch 1 and 16
  (compiled call + host NMS); peer: `Model.predict` on one frame (in-graph decode + NMS).
Usage: .venv/bin/python benchmarks/bench_train.py [--steps 20] [--set key=value ...]
"""

from __future__ import annotations

import argparse

import keras
import numpy as np
from keras.utils import PyDataset
from peers.common import BatchClock
from timing import median_seconds

from detseg.config import Config, load_config, parse_override
from detseg.data import Dataset, load_split, read_image, training_loader
from detseg.heads import Detector, YoloDetector, build_yolo
from detseg.quiet import start_backend_quietly
from detseg.tasks.detect import anchor_list, fit_config_anchors


def build_detector(cfg: Config) -> tuple[YoloDetector, PyDataset, Dataset]:
    """The config's detector (anchors fitted on its training split, compiled with AdamW at the
    config's learning rate), its training loader, and the training split."""
    train_ds = load_split(cfg.data, "train")
    anchors = anchor_list(fit_config_anchors(cfg, dataset=train_ds))
    model = build_yolo(cfg.model, len(train_ds.class_names), anchors, cfg.predict)
    model.compile(optimizer=keras.optimizers.AdamW(cfg.train.lr))
    return model, training_loader(cfg, train_ds, model.make_target_encoder()), train_ds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/shapes_yolov3_tiny.yaml")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()
    start_backend_quietly()
    cfg = load_config(args.config, dict(parse_override(s) for s in args.set))
    size, batch = cfg.model.input_size, cfg.train.batch_size
    model, loader, train_ds = build_detector(cfg)
    steps = min(args.steps, len(loader))
    ready = [loader[i] for i in range(steps)]

    loader_s = median_seconds(lambda: [loader[i] for i in range(steps)], 1) / steps
    model_s = median_seconds(lambda: [model.train_on_batch(x, y) for x, y in ready], 1) / steps
    clock = BatchClock(batch)
    ticks = keras.callbacks.LambdaCallback(on_train_batch_end=lambda _step, logs: clock.tick())
    model.fit(loader, epochs=1, steps_per_epoch=steps, shuffle=False, verbose=0, callbacks=[ticks])
    fit_s = batch / clock.images_per_second()

    peer = keras.applications.MobileNetV2(input_shape=(size, size, 3), weights=None, classes=3)
    peer.compile(keras.optimizers.AdamW(cfg.train.lr), "sparse_categorical_crossentropy")
    labels = np.arange(batch) % 3
    peer_s = median_seconds(lambda: peer.train_on_batch(ready[0][0], labels), max(3, steps // 4))

    frames = [read_image(s.image_path) for s in train_ds.samples[:batch]]
    detector = Detector(model, score_thr=cfg.predict.score_thr, iou_thr=cfg.predict.iou_thr, batch_size=batch)
    one_s = median_seconds(lambda: detector(frames[:1]), 20)
    many_s = median_seconds(lambda: detector(frames), 5) / batch
    predict_s = median_seconds(lambda: model.predict(ready[0][0][:1], verbose=0), 10)

    print(f"backend {keras.backend.backend()}, {size} px, batch {batch}, {steps} steps, params {model.count_params():,}")
    print("training (img/s)")
    print(f"  fit over the loader (augment + encode, {cfg.data.workers} workers) {batch / fit_s:8.1f}")
    print(f"  model alone (train_on_batch on ready batches)   {batch / model_s:8.1f}")
    print(f"  loader alone                                    {batch / loader_s:8.1f}  ({model_s / loader_s:.1f}x the model's rate)")
    print(f"  peer: MobileNetV2 classifier train_on_batch     {batch / peer_s:8.1f}  (ours {peer_s / model_s:.2f}x)")
    print("inference, model + decode + NMS (ms per image)")
    print(f"  Detector batch 1                                {one_s * 1000:8.1f}")
    print(f"  Detector batch {batch:<2d}                               {many_s * 1000:8.1f}")
    print(f"  peer: Model.predict, one frame                  {predict_s * 1000:8.1f}  (Detector {predict_s / one_s:.2f}x faster)")


if __name__ == "__main__":
    main()
