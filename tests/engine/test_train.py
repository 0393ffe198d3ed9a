"""Training engine: the time-budget schedule, and a small real run of the detector end to end."""

from __future__ import annotations

import csv
import json
import math
import time

import keras
import numpy as np
import pytest

from detseg.config import load_config
from detseg.engine.precision import set_op_determinism
from detseg.engine.train import MosaicClose, TimeBudgetSchedule, train
from detseg.tasks.base import GALLERY_ROWS, GALLERY_SIDE
from detseg.viz import TITLE_HEIGHT


def test_time_budget_rate_by_hand():
    sched = TimeBudgetSchedule(minutes=1, epochs=10, lr=1.0, schedule="cosine", warmup_epochs=2, alpha=0.05)
    assert sched.rate(0.0, epochs_done=1.0) == pytest.approx(0.5)  # half-way through the warm-up
    assert sched.rate(0.0, epochs_done=2.0) == pytest.approx(1.0)  # warm-up done: the peak
    # half-way through the cosine: 0.05 + 0.95 * 0.5 * (1 + cos(pi / 2)) = 0.525
    assert sched.rate(0.5, epochs_done=5.0) == pytest.approx(0.525)
    # the warm-up counts epochs whatever the time: 1 of 2 epochs at half the budget
    assert sched.rate(0.5, epochs_done=1.0) == pytest.approx(0.2625)
    assert sched.rate(1.0, epochs_done=10.0) == pytest.approx(0.05)  # the end: alpha * lr
    flat = TimeBudgetSchedule(minutes=1, epochs=10, lr=1.0, schedule="constant", warmup_epochs=0)
    assert flat.rate(0.9, epochs_done=9.0) == 1.0


def test_the_budget_spent_is_the_larger_of_the_time_and_the_epoch_shares():
    sched = TimeBudgetSchedule(minutes=10, epochs=4, lr=1.0, schedule="cosine", warmup_epochs=0, spent_minutes=2.0)
    sched.on_train_begin()
    assert sched.spent_fraction == pytest.approx(0.2, abs=1e-3)  # 2 of 10 minutes, no epoch yet
    sched.epochs_done = 3.0
    assert sched.spent_fraction == pytest.approx(0.75)  # 3 of 4 epochs: the epochs run out first
    sched.offset = 9.0 * 60
    assert sched.spent_fraction == pytest.approx(0.9, abs=1e-3)  # 9 of 10 minutes: now the time


class FastBatches(keras.utils.PyDataset):
    """10 batches an epoch, as fast as the model."""

    def __len__(self):
        return 10

    def __getitem__(self, i):
        return np.ones((2, 3), np.float32), np.ones((2, 1), np.float32)


def test_a_run_that_runs_out_of_epochs_before_its_time_ends_annealed():
    """An hour's budget and 2 epochs of 10 batches: the epochs bind, so the rate follows them:
    a 1-epoch warm-up, then the cosine to alpha * lr at the last batch."""
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    sched = TimeBudgetSchedule(minutes=60, epochs=2, lr=0.1, schedule="cosine", warmup_epochs=1)
    rates = []
    record = keras.callbacks.LambdaCallback(
        on_train_batch_begin=lambda b, logs: rates.append(float(model.optimizer.learning_rate))
    )
    model.fit(FastBatches(), epochs=2, callbacks=[sched, record], verbose=0)
    cosine = [0.005 + 0.095 * 0.5 * (1 + math.cos(math.pi * step / 20)) for step in range(20)]
    warm = [min(1.0, step / 10) for step in range(20)]
    # the time spent (seconds of an hour) moves the cosine by well under 1e-4
    assert rates == pytest.approx([w * c for w, c in zip(warm, cosine, strict=True)], abs=1e-4)


@pytest.mark.parametrize(
    ("name", "cls", "options"),
    [
        ("adam", keras.optimizers.Adam, {}),
        ("adamw", keras.optimizers.AdamW, {"weight_decay": 0.01}),
        ("nadam", keras.optimizers.Nadam, {}),
        ("sgd", keras.optimizers.SGD, {"momentum": 0.9, "nesterov": True}),
    ],
)
def test_the_configured_optimiser_is_built(name, cls, options):
    from detseg.engine.train import make_optimizer

    cfg = load_config(None, {"train.optimizer": name, "train.schedule": "constant", "train.warmup_epochs": 0, "train.lr": 0.01, "train.momentum": 0.9, "train.weight_decay": 0.01})
    optimizer = make_optimizer(cfg.train, steps_per_epoch=10)
    assert type(optimizer) is cls
    assert float(keras.ops.convert_to_numpy(optimizer.learning_rate)) == pytest.approx(0.01)
    for key, value in options.items():
        assert getattr(optimizer, key) == pytest.approx(value), key


def test_time_budget_continues_where_a_resumed_run_stopped():
    sched = TimeBudgetSchedule(minutes=2, epochs=100, lr=1.0, schedule="cosine", warmup_epochs=0, spent_minutes=1.0)
    sched.on_train_begin()
    # half the budget was spent before the resume: the rate resumes mid-cosine,
    # 0.05 + 0.95 * 0.5 * (1 + cos(pi / 2)) = 0.525
    assert sched.rate(sched.spent_fraction, epochs_done=10) == pytest.approx(0.525, abs=1e-3)
    logs = {}
    sched.on_epoch_end(0, logs)  # the minutes go to history.csv for the next resume
    assert logs["train_minutes"] == pytest.approx(1.0, abs=1e-3)
    assert not sched.exhausted
    assert TimeBudgetSchedule(
        minutes=1, epochs=100, lr=1.0, schedule="cosine", warmup_epochs=0, spent_minutes=1.0
    ).exhausted


class _Loader:
    mosaic_p = 0.5


def test_mosaic_closes_for_the_last_share_of_the_epochs_by_hand():
    """share 0.25 of 8 epochs: epochs 0-5 (done 0 .. 5/8 < 0.75) keep the mosaic, epoch 6 (6/8) closes it."""
    loader = _Loader()
    close = MosaicClose(loader, share=0.25, epochs=8, budget=None)
    seen = []
    for epoch in range(8):
        close.on_epoch_begin(epoch)
        logs = {}
        close.on_epoch_end(epoch, logs)
        seen.append(logs["mosaic_p"])
    assert seen == [0.5] * 6 + [0.0] * 2


def test_mosaic_closes_on_the_time_budget_when_it_runs_out_first():
    """With a time limit the share is of the time or of the epochs, whichever is spent more."""
    loader = _Loader()
    budget = TimeBudgetSchedule(minutes=4, epochs=100, lr=1.0, schedule="cosine", warmup_epochs=0, spent_minutes=2.9)
    budget.on_train_begin()
    close = MosaicClose(loader, share=0.25, epochs=100, budget=budget)
    close.on_epoch_begin(10)  # 2.9 of 4 minutes (72.5%) and 10% of the epochs: still open
    assert loader.mosaic_p == 0.5
    budget.offset = 3.0 * 60  # 75% of the time spent
    close.on_epoch_begin(11)
    assert loader.mosaic_p == 0.0


def test_mosaic_closes_on_the_epochs_when_they_run_out_before_the_time():
    loader = _Loader()
    budget = TimeBudgetSchedule(minutes=60, epochs=8, lr=1.0, schedule="cosine", warmup_epochs=0)
    budget.on_train_begin()
    close = MosaicClose(loader, share=0.25, epochs=8, budget=budget)
    close.on_epoch_begin(5)  # 5/8 of the epochs, seconds of the hour
    assert loader.mosaic_p == 0.5
    close.on_epoch_begin(6)  # 6/8 = 75% of the epochs
    assert loader.mosaic_p == 0.0


class SlowBatches(keras.utils.PyDataset):
    """40 batches of 0.2 s each: 8 s an epoch."""

    def __len__(self):
        return 40

    def __getitem__(self, i):
        time.sleep(0.2)
        return np.ones((2, 3), np.float32), np.ones((2, 1), np.float32)


def test_time_budget_stops_mid_epoch_with_an_annealed_rate():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    sched = TimeBudgetSchedule(minutes=3 / 60, epochs=5, lr=0.1, schedule="cosine", warmup_epochs=0)
    seen = []
    record = keras.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: seen.append(b))
    history = model.fit(SlowBatches(), epochs=5, callbacks=[sched, record], verbose=0)
    assert len(history.history["loss"]) == 1  # stopped inside the first 8 s epoch
    assert 2 <= len(seen) < 40
    # the last batch began past (3 - 0.2) / 3 = 93% of the budget: rate <= 0.0061 (by rate())
    assert float(model.optimizer.learning_rate) < 0.1 * 0.2


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    cfg = load_config(
        "configs/shapes_yolov3_tiny.yaml",
        {
            "name": "tiny",
            "out_dir": str(root / "runs"),
            "data.cache_dir": str(root / "cache"),
            "data.shapes": {"num_train": 16, "num_val": 8, "image_size": 64, "min_size": 12, "max_size": 32},
            "data.workers": 0,
            "model.input_size": 64,
            "model.backbone_width": 0.25,
            "model.yolo.width": 0.25,
            "train.epochs": 2,
            "train.batch_size": 8,
            "train.time_limit": None,
            "train.gallery_every": 1,
            "train.augment.mosaic_p": 0.5,
            "train.augment.mosaic_close": 0.5,
        },
    )
    return cfg, train(cfg)


def test_run_folder_holds_the_promised_files(tiny_run):
    cfg, run_dir = tiny_run
    for name in ("config.yaml", "best.keras", "last.keras", "history.csv", "metrics.json", "metrics_voc.json", "detections.json", "plots/curves.png"):
        assert (run_dir / name).is_file(), name
    saved = load_config(run_dir / "config.yaml")
    assert saved.data.names == ["circle", "square", "triangle"]
    assert isinstance(saved.model.yolo.anchors, list) and len(saved.model.yolo.anchors) == 6  # 2 levels x 3
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert len(metrics["stats"]) == 12 and metrics["AP50"] == metrics["stats"][1]
    assert set(metrics["per_class"]) == {"circle", "square", "triangle"}
    with (run_dir / "history.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and {"loss", "box_loss", "obj_loss", "cls_loss", "val_mAP", "val_mAP50"} <= set(rows[0])
    assert all(math.isfinite(float(row[k])) for row in rows for k in ("loss", "val_mAP"))
    assert float(rows[-1]["lr"]) == pytest.approx(keras.ops.convert_to_numpy(keras.saving.load_model(run_dir / "last.keras").optimizer.learning_rate))


def test_detections_json_scores_against_the_split_written_as_coco(tiny_run, tmp_path):
    """detections.json carries the ids `write_coco` (`detseg convert --to coco`) gives the split."""
    from detseg.data import load_split
    from detseg.data.coco import write_coco
    from detseg.metrics import evaluate_coco_files

    cfg, run_dir = tiny_run
    gt = write_coco(load_split(cfg.data, "val"), tmp_path / "val.json")
    stats = evaluate_coco_files(gt, run_dir / "detections.json")["stats"]
    assert stats == pytest.approx(json.loads((run_dir / "metrics.json").read_text())["stats"], abs=2e-3)


def test_evaluate_reproduces_the_training_report(tiny_run):
    from detseg.engine.evaluate import evaluate_model

    _, run_dir = tiny_run
    saved = json.loads((run_dir / "metrics.json").read_text())
    again = evaluate_model(run_dir, print_fn=lambda text: None)
    assert again["stats"] == pytest.approx(saved["stats"], abs=1e-12)


def _history(run_dir) -> list[dict[str, str]]:
    with (run_dir / "history.csv").open() as f:
        return list(csv.DictReader(f))


def test_the_mosaic_closes_for_the_last_half_of_a_real_run(tiny_run):
    """mosaic_close 0.5 of 2 epochs: the first trains with the mosaic, the second without."""
    _, run_dir = tiny_run
    assert [float(row["mosaic_p"]) for row in _history(run_dir)] == [0.5, 0.0]


def test_a_seed_reproduces_the_losses_exactly(tiny_run):
    """The same config and seed trained again in the same process (with TensorFlow's op
    determinism this time, and without the gallery) logs the very same losses and scores; a
    run drawing no gallery also shows that drawing one takes nothing from the random streams."""
    cfg, run_dir = tiny_run
    again = cfg.model_copy(update={"name": "again", "train": cfg.train.model_copy(update={"deterministic": True, "gallery_every": 0})})
    try:
        rows = _history(train(again))
    finally:
        set_op_determinism(False)
    first = _history(run_dir)
    columns = [key for key in first[0] if key.endswith("loss") or key.startswith("val_")]
    assert len(columns) >= 6  # loss, box_loss, obj_loss, cls_loss, val_mAP, val_mAP50
    assert [[row[k] for k in columns] for row in rows] == [[row[k] for k in columns] for row in first]


@pytest.mark.slow
def test_another_seed_logs_other_losses(tiny_run):
    """The seed reaches the run: seed 1 (other weights, order and augmentation) logs another
    first-epoch loss than the fixture's seed 0. Slow: a third training of the detector."""
    cfg, run_dir = tiny_run
    other = cfg.model_copy(update={"name": "seed1", "train": cfg.train.model_copy(update={"seed": 1, "gallery_every": 0})})
    assert float(_history(train(other))[0]["loss"]) != float(_history(run_dir)[0]["loss"])


def test_the_gallery_is_drawn_every_epoch_into_png_and_tensorboard(tiny_run):
    import cv2
    from tensorflow.compat.v1.train import summary_iterator

    _, run_dir = tiny_run
    # 4 validation images, each letterboxed to GALLERY_SIDE, 2 columns 4 px apart, under the titles
    expected = (TITLE_HEIGHT + GALLERY_ROWS * (GALLERY_SIDE + 4), 2 * GALLERY_SIDE + 4, 3)
    for epoch in (1, 2):
        image = cv2.imread(str(run_dir / "plots" / f"gallery_epoch{epoch:03d}.png"))
        assert image is not None and image.shape == expected, epoch
    assert not list((run_dir / "plots").glob("gallery_epoch003*"))
    images = [
        (event.step, value)
        for path in sorted((run_dir / "logs" / "gallery").glob("events.out.tfevents.*"))
        for event in summary_iterator(str(path))
        for value in event.summary.value
    ]
    assert [(step, value.tag, value.metadata.plugin_data.plugin_name) for step, value in images] == [
        (0, "gallery", "images"),
        (1, "gallery", "images"),
    ]
    width, height = (int(v) for v in images[0][1].tensor.string_val[:2])  # then the PNG bytes
    assert (height, width) == expected[:2]


@pytest.mark.parametrize(("tty", "level", "verbose"), [(True, "INFO", 1), (False, "INFO", 2), (True, "WARNING", 0)])
def test_fit_shows_a_progress_bar_in_a_terminal_and_epoch_lines_in_a_file(monkeypatch, capsys, caplog, tty, level, verbose):
    import sys

    from detseg.engine.train import fit_verbosity

    monkeypatch.setattr(sys.stdout, "isatty", lambda: tty)
    caplog.set_level(level, logger="detseg")
    assert fit_verbosity() == verbose
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    model.fit(np.ones((8, 3)), np.ones((8, 1)), batch_size=2, epochs=2, verbose=fit_verbosity())
    out = capsys.readouterr().out
    # Keras's bar redraws itself with carriage returns; the file form is one line per epoch
    assert ("\r" in out) == (verbose == 1)
    assert (out == "") == (verbose == 0)
    if verbose == 2:
        assert out.count("4/4") == 2 and len(out.strip().splitlines()) == 4  # "Epoch k/2" and its line, twice
