"""Classification as a task: crops, the batch loader, metrics, the transfer-learning flow of
`train`, learning on the shapes crops, and train/evaluate/predict (images and video) from
the CLI."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import cv2
import keras
import numpy as np
import pytest
import yaml

from detseg import cli
from detseg.config import load_config
from detseg.data import Dataset, Sample
from detseg.data.classification import (
    ClassificationLoader,
    check_classes,
    load_classification_split,
)
from detseg.data.crops import cut_crop, object_crops
from detseg.engine.evaluate import evaluate_model
from detseg.engine.train import train, training_phases
from detseg.errors import DetsegError
from detseg.metrics import classification_metrics
from tests.data.helpers import keras_epochs

REPO = Path(__file__).resolve().parents[2]
RED, BLUE = (255, 0, 0), (0, 0, 255)


# === Helpers ===


def write_rgb(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return path


def make_imagefolder(root: Path, per_class: int, seed: int = 0, size: int = 32) -> Path:
    """root/{bright,dark}/*.png: noisy 32x32 images, bright (mean ~190) or dark (mean ~60)."""
    rng = np.random.default_rng(seed)
    for name, level in (("bright", 190), ("dark", 60)):
        for i in range(per_class):
            noise = rng.normal(level, 25, (size, size, 3))
            write_rgb(root / name / f"{name}{i}.png", np.clip(noise, 0, 255).astype(np.uint8))
    return root


def imagefolder_config(tmp_path: Path, **train) -> dict:
    make_imagefolder(tmp_path / "data" / "train", 8, seed=0)
    make_imagefolder(tmp_path / "data" / "val", 3, seed=1)
    return {
        "name": "folder",
        "out_dir": str(tmp_path / "runs"),
        "data": {
            "format": "imagefolder",
            "root": str(tmp_path / "data"),
            "train": {"annotations": "train"},
            "val": {"annotations": "val"},
            "workers": 0,
        },
        "model": {
            "kind": "classifier",
            "backbone": "darknet_tiny",
            "backbone_width": 0.25,
            "input_size": 32,
        },
        "train": {"epochs": 1, "batch_size": 8, "warmup_epochs": 0, **train},
    }


def weights_of(variables) -> list[np.ndarray]:
    return [keras.ops.convert_to_numpy(v).copy() for v in variables]


def all_equal(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def none_equal(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return not any(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


# === Crops ===


def test_object_crops_pad_clip_and_count_crowd_boxes(tmp_path):
    sample = Sample(
        tmp_path / "a.png",
        100,
        80,
        [[10, 10, 30, 50], [90, 0, 100, 20], [0, 0, 50, 50]],
        [0, 1, 1],
        iscrowd=[False, False, True],
    )
    crops = object_crops(Dataset([sample], ["a", "b"]), padding=0.1)
    # box 1: w 20, h 40 -> +-2 x, +-4 y: [8, 6, 32, 54]
    # box 2: w 10, h 20 -> [89, -2, 101, 22], clipped to the 100x80 image: [89, 0, 100, 22]
    np.testing.assert_allclose(crops.boxes, [[8, 6, 32, 54], [89, 0, 100, 22]])
    assert crops.labels.tolist() == [0, 1]
    assert crops.class_counts().tolist() == [1, 1]
    assert crops.summary.num_skipped == 1  # the crowd box, counted, not silently dropped
    assert "crowd" in crops.summary.problem_lines()[0]


def test_cut_crop_takes_every_touched_pixel():
    image = np.arange(10 * 12).reshape(10, 12)
    # x from 1.5 to 4.1 touches columns 1..4; y from 2.2 to 5.0 touches rows 2..4
    np.testing.assert_array_equal(cut_crop(image, np.array([1.5, 2.2, 4.1, 5.0])), image[2:5, 1:5])
    # a box thinner than a pixel at the border still gives one pixel
    assert cut_crop(image, np.array([12.0, 3.0, 12.0, 3.0])).shape == (1, 1)


# === Loader ===


def test_loader_letterboxes_each_crop_with_its_label(tmp_path):
    # A 64x48 image: a red 20x10 rectangle at (4, 6) and a blue 16x16 square at (40, 20).
    image = np.full((48, 64, 3), 255, np.uint8)
    image[6:16, 4:24] = RED
    image[20:36, 40:56] = BLUE
    path = write_rgb(tmp_path / "img.png", image)
    dataset = Dataset(
        [Sample(path, 64, 48, [[4, 6, 24, 16], [40, 20, 56, 36]], [0, 1])], ["red", "blue"]
    )
    images, labels = ClassificationLoader(object_crops(dataset), 32, 2)[0]
    assert images.dtype == np.uint8 and images.shape == (2, 32, 32, 3)  # pixels, as read
    assert labels.dtype == np.int32 and labels.tolist() == [0, 1]
    # The 20x10 red crop fills 32x16 of the letterbox, centred: rows 8..23; rows above and
    # below are the pad grey 114.
    np.testing.assert_array_equal(images[0, 8:24], np.broadcast_to(RED, (16, 32, 3)))
    np.testing.assert_array_equal(images[0, :8], np.full((8, 32, 3), 114))
    np.testing.assert_array_equal(images[0, 24:], np.full((8, 32, 3), 114))
    np.testing.assert_array_equal(images[1], np.broadcast_to(BLUE, (32, 32, 3)))


def test_loader_order_is_a_seeded_permutation_per_epoch(tmp_path):
    crops = load_classification_split(load_config(None, imagefolder_config(tmp_path)).data, "train")
    first = ClassificationLoader(crops, 32, 4, shuffle=True, seed=3)
    again = ClassificationLoader(crops, 32, 4, shuffle=True, seed=3)
    epoch0 = np.concatenate([first.batch_indices(i) for i in range(len(first))])
    assert sorted(epoch0.tolist()) == list(range(len(crops)))
    x0, y0 = first[1]
    x1, y1 = again[1]
    np.testing.assert_array_equal(x0, x1)
    np.testing.assert_array_equal(y0, crops.labels[first.batch_indices(1)])
    first.on_epoch_end()
    epoch1 = np.concatenate([first.batch_indices(i) for i in range(len(first))])
    assert epoch1.tolist() != epoch0.tolist()


@pytest.mark.parametrize("processes", [False, True], ids=["threads", "processes"])
def test_augmented_epochs_are_the_same_on_keras_workers(tmp_path, processes):
    """Each crop's augmentation is seeded by (seed, epoch, position): Keras's worker threads or
    processes give the batches of a sequential pass, epoch after epoch."""
    from detseg.config import AugmentConfig
    from detseg.data import build_augment

    crops = load_classification_split(load_config(None, imagefolder_config(tmp_path)).data, "train")
    augment = build_augment(AugmentConfig(hflip=0.5, rotate=20, affine_p=1.0, color_p=1.0))

    def epochs(workers: int) -> list:
        loader = ClassificationLoader(crops, 32, 4, augment=augment, shuffle=True, seed=5, workers=workers, use_multiprocessing=processes)
        return [[x for x, _ in epoch] for epoch in keras_epochs(loader)]

    sequential, parallel = epochs(0), epochs(2)
    assert not np.array_equal(sequential[0][0], sequential[1][0])  # each epoch is new
    for one, other in zip(sequential, parallel, strict=True):
        assert all(np.array_equal(a, b) for a, b in zip(one, other, strict=True))


# === Data errors ===


def test_classifier_data_errors_name_the_problem(tmp_path):
    raw = imagefolder_config(tmp_path)
    cfg = load_config(None, raw)
    with pytest.raises(DetsegError, match="data.crops"):
        load_classification_split(cfg.data.model_copy(update={"format": "coco"}), "train")

    (tmp_path / "data" / "train" / "empty").mkdir()
    train = load_classification_split(cfg.data, "train")
    with pytest.raises(DetsegError, match="no training images of class.*empty") as err:
        check_classes(train, "train")
    assert str(tmp_path / "data" / "train") in str(err.value)

    val = load_classification_split(cfg.data, "val")
    with pytest.raises(DetsegError, match="differ from the training classes"):
        check_classes(val, "val", train.class_names)


# === Metrics ===


def test_metrics_by_hand():
    probs = np.array(
        [
            [0.7, 0.2, 0.1],  # true 0, top-1 hit
            [0.5, 0.4, 0.1],  # true 1, predicted 0, top-2 hit
            [0.1, 0.3, 0.6],  # true 2, top-1 hit
            [0.2, 0.5, 0.3],  # true 0, predicted 1, rank 3: no top-2 hit
        ]
    )
    m = classification_metrics(probs, np.array([0, 1, 2, 0]), ["a", "b", "c"])
    assert m["accuracy"] == 0.5  # 2 of 4
    assert m["top_k"] == {"1": 0.5, "2": 0.75}  # k=3 is not below 3 classes: trivially 1
    assert m["per_class"] == {"a": 0.5, "b": 0.0, "c": 1.0}
    assert m["confusion_matrix"] == [
        [1, 1, 0],
        [1, 0, 0],
        [0, 0, 1],
    ]  # rows true, columns predicted


def test_metrics_match_keras_and_a_slow_loop():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(7), 300).astype(np.float32)
    labels = rng.integers(0, 6, 300)  # class 6 never occurs
    m = classification_metrics(probs, labels, [f"c{i}" for i in range(7)])
    for k in (1, 2, 3, 5):
        reference = keras.metrics.SparseTopKCategoricalAccuracy(k=k)
        reference.update_state(labels, probs)
        assert m["top_k"][str(k)] == pytest.approx(float(reference.result()), abs=1e-6)
    matrix = np.zeros((7, 7), int)
    for true, p in zip(labels, probs, strict=True):
        matrix[true, int(np.argmax(p))] += 1
    assert m["confusion_matrix"] == matrix.tolist()
    assert m["per_class"]["c6"] is None
    assert m["per_class"]["c2"] == pytest.approx(matrix[2, 2] / matrix[2].sum())


# === Training ===


def test_training_phases_split_epochs_and_learning_rates():
    cfg = load_config(None, {"train": {"epochs": 5, "lr": 0.01, "freeze_backbone_epochs": 2}}).train
    phases = [(a, b, frozen, c.epochs, c.lr) for a, b, frozen, c in training_phases(cfg)]
    assert phases == [(0, 2, True, 2, 0.01), (2, 5, False, 3, pytest.approx(0.001))]  # lr / 10
    only_head = cfg.model_copy(update={"freeze_backbone_epochs": 9})
    assert [(a, b, f) for a, b, f, _ in training_phases(only_head)] == [(0, 5, True)]


class PhaseRecorder(keras.callbacks.Callback):
    """Weights of the backbone and head, and the learning rate, at the start and end of every fit."""

    def __init__(self):
        super().__init__()
        self.begin, self.end, self.lr, self.trainable = [], [], [], []

    def _snapshot(self):
        return (
            weights_of(self.model.get_layer("backbone").weights),
            weights_of(self.model.get_layer("predictions").weights),
        )

    def on_train_begin(self, logs=None):
        self.begin.append(self._snapshot())
        self.lr.append(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))
        self.trainable.append(len(self.model.trainable_weights))

    def on_train_end(self, logs=None):
        self.end.append(self._snapshot())


def test_freeze_then_fine_tune_through_train(tmp_path):
    raw = imagefolder_config(
        tmp_path, epochs=2, freeze_backbone_epochs=1, lr=0.01, finetune_lr=0.002
    )
    raw["train"].update({"schedule": "constant", "optimizer": "adam"})
    cfg = load_config(None, raw)
    recorder = PhaseRecorder()
    run = train(cfg, callbacks=[recorder])

    assert len(recorder.begin) == 2  # two fits: frozen, then fine-tuning
    (bb0, head0), (bb1, head1), (bb2, head2) = recorder.begin[0], recorder.end[0], recorder.end[1]
    # Frozen phase: every backbone variable (kernels and BN statistics) unchanged, the head moved.
    assert all_equal(bb0, bb1)
    assert none_equal(head0, head1)
    assert recorder.trainable[0] == 2  # the head's kernel and bias only
    # Fine-tuning: the backbone and the head both move, at finetune_lr.
    assert none_equal(bb1, bb2)
    assert none_equal(head1, head2)
    assert recorder.trainable[1] > 2
    assert recorder.lr == [pytest.approx(0.01), pytest.approx(0.002)]

    with open(run / "history.csv") as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["0", "1"]
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"]["names"] == ["bright", "dark"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert sum(map(sum, metrics["confusion_matrix"])) == 6  # 3 val images per class
    for name in ("best.keras", "last.keras", "confusion_matrix.png", "backbone.weights.h5"):
        assert (run / name).is_file(), name


@pytest.mark.slow  # 16 epochs, ~100 s; the default run trains classifiers in the freeze, CLI and resume tests
def test_classifier_learns_the_shapes_crops(tmp_path):
    """The shipped config, as is, learns: held-out (test split) accuracy well above chance (1/3)."""
    cfg = load_config(
        REPO / "configs" / "shapes_classifier.yaml",
        {"out_dir": str(tmp_path / "runs"), "data.cache_dir": str(tmp_path / "cache")},
    )
    run = train(cfg)
    saved = load_config(run / "config.yaml")
    assert saved.data.names == ["circle", "square", "triangle"]
    # last.keras: no model selection on these images either. Measured: 0.85 (val-selected best: 0.855).
    metrics = evaluate_model(run / "last.keras", split="test", print_fn=lambda _: None)
    assert metrics["num_images"] > 100
    assert metrics["accuracy"] > 0.8
    assert min(metrics["per_class"].values()) > 0.6
    written = json.loads((run / "eval_test" / "metrics.json").read_text())
    assert written == metrics


# === Command line ===


def cli_in_process(capsys, *args: str) -> subprocess.CompletedProcess:
    """`detseg ARGS` through `detseg.cli.main` in this process (no second TensorFlow start)."""
    capsys.readouterr()
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["detseg", *args], code, out, err)


def test_cli_train_evaluate_predict_on_an_image_folder(tmp_path, capsys, monkeypatch):
    config = tmp_path / "folder.yaml"
    config.write_text(yaml.safe_dump(imagefolder_config(tmp_path)))
    monkeypatch.chdir(tmp_path)
    res = cli_in_process(capsys, "train", str(config), "--set", "train.epochs=1")
    assert res.returncode == 0, res.stderr
    run = tmp_path / "runs" / "folder"

    res = cli_in_process(capsys, "evaluate", str(run), "--json", str(tmp_path / "copy.json"))
    assert res.returncode == 0, res.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    assert json.loads((tmp_path / "copy.json").read_text()) == metrics  # --json: the same dict, where asked
    assert f"accuracy {metrics['accuracy']:.3f}" in res.stdout
    # Reference: the model run here on the val images (32x32 = the input: no letterbox change).
    model = keras.saving.load_model(run / "best.keras")
    names = ["bright", "dark"]
    files = sorted((tmp_path / "data" / "val").glob("*/*.png"))
    images = np.stack([cv2.imread(str(p))[..., ::-1] for p in files])
    truth = np.array([names.index(p.parent.name) for p in files])
    predicted = model.predict(images, verbose=0).argmax(axis=1)
    assert metrics["accuracy"] == pytest.approx(float(np.mean(predicted == truth)))

    source = tmp_path / "predict"
    source.mkdir()
    for path in files[:2]:
        (source / path.name).write_bytes(path.read_bytes())
    (source / "broken.png").write_bytes(b"not an image")
    res = cli_in_process(capsys, "predict", str(run), "--source", str(source))
    assert res.returncode == 0, res.stderr
    printed = res.stdout.splitlines()
    for path in files[:2]:  # one line per image: "<file>: <label> <score>, <label> <score>"
        line = next(text for text in printed if text.startswith(f"{path.name}: "))
        label, score = line.split(": ")[1].split(", ")[0].split()
        expected = model.predict(images[files.index(path)][None], verbose=0)[0]
        assert label == names[int(expected.argmax())]
        assert float(score) == pytest.approx(float(expected.max()), abs=1e-3)
    assert "skipped 1 unreadable image(s): broken.png" in res.stdout

    # The same model on a video, through the same threaded runner as a detector: an annotated
    # video and one JSON line per frame with its top-k classes.
    clip = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 5, (320, 240))
    for level in (40, 200, 40, 200, 40, 200):
        writer.write(np.full((240, 320, 3), level, np.uint8))
    writer.release()
    out_video, out_jsonl = tmp_path / "annotated.mp4", tmp_path / "frames.jsonl"
    res = cli_in_process(capsys, "predict", str(run), "--source", str(clip), "--save", str(out_video), "--jsonl", str(out_jsonl))
    assert res.returncode == 0, res.stderr
    records = [json.loads(line) for line in out_jsonl.read_text().splitlines()]
    assert [r["frame"] for r in records] == list(range(6))
    for record in records:
        assert record["classes"] == [names[i] for i in record["labels"]] and len(record["labels"]) == 2
        assert record["scores"] == sorted(record["scores"], reverse=True) and sum(record["scores"]) == pytest.approx(1, abs=2e-4)
    capture = cv2.VideoCapture(str(out_video))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 6
    frames = [capture.read()[1] for _ in range(2)]
    capture.release()
    bright = frames[1]  # a frame of level 200
    # (lossy video: compare means) the frame is bright but for the top-k text box, black, in
    # the bottom-left corner
    assert bright.shape == (240, 320, 3) and bright[100:140, -40:].mean() > 150
    assert bright[-3:, :10].mean() < 60


@pytest.mark.slow  # ~10 s; the default run builds the recipe (test_fashion_cnn_has_the_chapters_parameter_count)
def test_fashion_recipe_trains_on_a_grayscale_28px_image_folder(tmp_path):
    """configs/fashion_cnn.yaml on generated 28x28 grayscale PNGs: horizontal vs vertical
    stripes vs flat grey, told apart after a few epochs (chance: 1/3)."""
    rng = np.random.default_rng(0)
    rows = np.arange(28)[:, None] % 6 < 3
    patterns = {"horizontal": np.broadcast_to(rows, (28, 28)), "vertical": np.broadcast_to(rows.T, (28, 28)), "flat": np.zeros((28, 28), bool)}
    for split, count in (("train", 16), ("val", 6)):
        for name, pattern in patterns.items():
            for i in range(count):
                image = np.clip(np.where(pattern, 200, 80) + rng.normal(0, 20, (28, 28)), 0, 255).astype(np.uint8)
                (tmp_path / split / name).mkdir(parents=True, exist_ok=True)
                assert cv2.imwrite(str(tmp_path / split / name / f"{i}.png"), image)  # one channel
    overrides = {"data.root": str(tmp_path), "data.workers": 0, "out_dir": str(tmp_path / "runs"), "train.epochs": 6, "train.batch_size": 16}
    run = train(load_config("configs/fashion_cnn.yaml", overrides))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["accuracy"] >= 0.9, metrics["accuracy"]


def _xception_transfer(tmp_path: Path, **overrides):
    """configs/xception_transfer.yaml on a tiny image folder at 75 px (Xception's smallest
    input is 71), starting from random Xception weights saved to a local file."""
    source = keras.applications.Xception(include_top=False, weights=None, input_shape=(75, 75, 3))
    weights = tmp_path / "xception_notop.weights.h5"
    source.save_weights(weights)
    make_imagefolder(tmp_path / "data" / "train", 4, seed=0)
    make_imagefolder(tmp_path / "data" / "val", 2, seed=1)
    values = {"data.root": str(tmp_path / "data"), "data.workers": 0, "model.weights": str(weights), "model.input_size": 75, "out_dir": str(tmp_path / "runs"), **overrides}
    return source, load_config("configs/xception_transfer.yaml", values)


def test_xception_transfer_recipe_starts_from_a_local_weights_file(tmp_path):
    from detseg.tasks import TASKS

    source, cfg = _xception_transfer(tmp_path)
    model = TASKS["classifier"].build_model(cfg, 2)
    backbone = model.get_layer("backbone")
    for ours, theirs in zip(backbone.weights, source.weights, strict=True):  # same layers, same order
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(ours), keras.ops.convert_to_numpy(theirs))
    assert backbone.get_layer("pixels").mode == "tf"  # Xception: 0..255 -> -1..1


@pytest.mark.slow  # Xception trains at ~1 s per step here
def test_xception_transfer_recipe_freezes_then_fine_tunes(tmp_path):
    _, cfg = _xception_transfer(tmp_path, **{"train.epochs": 2, "train.freeze_backbone_epochs": 1, "train.batch_size": 4})
    recorder = PhaseRecorder()
    train(cfg, callbacks=[recorder])
    (bb0, _), (bb1, _), (bb2, _) = recorder.begin[0], recorder.end[0], recorder.end[1]
    assert all_equal(bb0, bb1) and none_equal(bb1, bb2)
    assert recorder.lr == [pytest.approx(0.1), pytest.approx(0.01)]
