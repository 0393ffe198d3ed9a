"""Segmentation as a task: tiled and letterboxed inference, the stream predictor, and a small
U-Net trained, evaluated, run on video and exported through the engine."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from detseg.config import load_config
from detseg.data import letterbox, unletterbox_map
from detseg.errors import DetsegError
from detseg.heads.unet_infer import Segmenter, tile_starts
from detseg.tasks.predictors import SegmentationPredictor
from tests.engine.test_classify import cli_in_process

NAMES = ["background", "red", "blue"]


# === Inference on any image size ===


def colour_rule(images: np.ndarray) -> np.ndarray:
    """A fake segmenter that needs no context: red pixels are class 1, blue 2, others 0."""
    r, b = images[..., 0].astype(int), images[..., 2].astype(int)
    return np.where(r > 150, 1, np.where(b > 150, 2, 0))


def blobs(height: int, width: int) -> np.ndarray:
    image = np.zeros((height, width, 3), np.uint8)
    image[5:40, 10:70] = (255, 0, 0)
    image[height - 30 : height - 3, width - 50 : width - 4] = (0, 0, 255)
    return image


def test_tile_starts_by_hand():
    # 200 px in 64 px tiles with >= 16 px overlap: stride <= 48, ceil(136 / 48) + 1 = 4 tiles,
    # spread evenly so the last ends at 200: 0, 136/3 = 45.3 -> 45, 90.7 -> 91, 136
    assert tile_starts(200, 64, 16) == [0, 45, 91, 136]
    assert tile_starts(64, 64, 16) == [0] and tile_starts(50, 64, 16) == [0]
    starts = tile_starts(1000, 128, 32)
    assert starts[-1] + 128 == 1000 and max(np.diff(starts)) <= 128 - 32


def test_tiles_reproduce_a_context_free_rule_exactly():
    image = blobs(150, 230)  # larger than the 64 px input on both sides, not a multiple of it
    segmenter = Segmenter(colour_rule, 64, batch_size=5, tile=True, tile_overlap=0.25)
    (class_map,) = segmenter([image])
    assert class_map.shape == (150, 230) and class_map.dtype == np.uint8
    np.testing.assert_array_equal(class_map, colour_rule(image))


def test_letterboxed_maps_come_back_to_the_original_pixels():
    image = blobs(96, 160)
    (class_map,) = Segmenter(colour_rule, 64)([image])
    assert class_map.shape == (96, 160)
    # the rule on the letterboxed image, mapped back by hand: crop the padding, resize nearest
    boxed, params = letterbox(image, 64)
    expected = unletterbox_map(colour_rule(boxed[None])[0].astype(np.uint8), params)
    np.testing.assert_array_equal(class_map, expected)
    assert (class_map == colour_rule(image)).mean() > 0.97  # only edge pixels move


def test_segmenter_refuses_non_rgb_images():
    with pytest.raises(DetsegError, match="RGB uint8"):
        Segmenter(colour_rule, 64)([np.zeros((10, 10), np.uint8)])


def test_predictor_records_pixel_fractions_and_draws_a_legend():
    class_map = np.zeros((10, 20), np.uint8)
    class_map[:, :5] = 1  # 50 of 200 pixels: 0.25
    class_map[0, 19] = 2  # 1 of 200: 0.005
    predictor = SegmentationPredictor(lambda images: [class_map], NAMES)
    image = np.full((10, 20, 3), 128, np.uint8)
    (result,) = predictor([image])
    assert predictor.record(result) == {"fractions": {"background": 0.745, "red": 0.25, "blue": 0.005}}
    assert predictor.describe(result) == "background 0.745, red 0.250, blue 0.005"
    big = np.full((120, 200, 3), 128, np.uint8)
    big_map = cv2.resize(class_map, (200, 120), interpolation=cv2.INTER_NEAREST)
    drawn = predictor.draw(big, big_map)
    assert np.array_equal(big, np.full_like(big, 128))  # drawn on a copy
    assert (drawn[60, 150] == 128).all()  # background is not tinted
    assert not (drawn[60, 20] == 128).all()  # red class tinted
    assert (drawn[2, -3] == 0).all()  # the legend's black box, top right


def test_predictor_paints_colour_masks_and_writes_rle_of_each_present_class():
    from pycocotools import mask as mask_utils

    from detseg.viz import class_color

    class_map = np.zeros((7, 9), np.uint8)
    class_map[1:4, 2:6] = 1
    class_map[5, 0] = 1  # a second, separate region of the same class
    class_map[6, 8] = 2
    predictor = SegmentationPredictor(lambda images: [class_map], NAMES, rle=True)
    painted = predictor.mask_image(class_map)
    assert painted.dtype == np.uint8 and painted.shape == (7, 9, 3)
    assert (painted[2, 3] == class_color(1)).all() and (painted[6, 8] == class_color(2)).all()
    assert (painted[0, 0] == 0).all()  # "background" stays black
    record = predictor.record(class_map)
    assert set(record["rle"]) == {"background", "red", "blue"}  # the classes present
    for label, name in enumerate(NAMES):
        rle = {**record["rle"][name], "counts": record["rle"][name]["counts"].encode()}
        assert rle["size"] == [7, 9]
        assert np.array_equal(mask_utils.decode(rle), class_map == label), name
    assert "rle" not in SegmentationPredictor(lambda images: [class_map], NAMES).record(class_map)


def test_predictor_checks_the_map_size():
    predictor = SegmentationPredictor(lambda images: [np.zeros((5, 5), np.uint8)], NAMES)
    with pytest.raises(ValueError, match="class map"):
        predictor([np.zeros((6, 5, 3), np.uint8)])


# === Through the engine ===


def tiny_config(root: Path) -> dict:
    return {
        "name": "seg",
        "out_dir": str(root / "runs"),
        "data": {
            "builtin": "shapes",
            "cache_dir": str(root / "cache"),
            "shapes": {"num_train": 12, "num_val": 6, "image_size": 64, "min_size": 14, "max_size": 40, "video_frames": 6},
            "workers": 0,
        },
        "model": {"kind": "unet", "backbone": "unet", "backbone_width": 0.125, "input_size": 64, "unet": {"depth": 3}},
        "train": {"epochs": 2, "batch_size": 6, "warmup_epochs": 0, "lr": 0.01, "gallery_every": 1},
    }


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory):
    from detseg.engine.train import train

    root = tmp_path_factory.mktemp("seg")
    cfg = load_config(None, tiny_config(root))
    return root, cfg, train(cfg)


def test_run_folder_and_report(seg_run):
    from detseg.engine.evaluate import evaluate_model

    _, _, run = seg_run
    for name in ("config.yaml", "best.keras", "last.keras", "history.csv", "metrics.json", "confusion_matrix.png", "gallery.png"):
        assert (run / name).is_file(), name
    saved = load_config(run / "config.yaml")
    assert saved.data.names == ["background", "circle", "square", "triangle"]  # the mask classes
    metrics = json.loads((run / "metrics.json").read_text())
    matrix = np.array(metrics["confusion_matrix"])
    assert matrix.sum() == 6 * 64 * 64  # every pixel of the 6 validation images, in their own size
    assert metrics["pixel_accuracy"] == pytest.approx(np.trace(matrix) / matrix.sum())
    again = evaluate_model(run, print_fn=lambda text: None)
    assert again["mIoU"] == pytest.approx(metrics["mIoU"], abs=1e-12)
    header = (run / "history.csv").read_text().splitlines()[0]
    assert "val_mIoU" in header and "dice_loss" in header


def test_training_draws_a_gallery_of_validation_masks_every_epoch(seg_run):
    from detseg.tasks.base import GALLERY_ROWS, GALLERY_SIDE
    from detseg.viz import TITLE_HEIGHT

    _, _, run = seg_run
    # truth | prediction of 4 of the 6 validation images, each letterboxed to GALLERY_SIDE
    expected = (TITLE_HEIGHT + GALLERY_ROWS * (GALLERY_SIDE + 4), 2 * GALLERY_SIDE + 4, 3)
    shapes = [cv2.imread(str(run / "plots" / f"gallery_epoch{epoch:03d}.png")).shape for epoch in (1, 2)]
    assert shapes == [expected, expected]
    assert sorted(p.name for p in (run / "plots").glob("gallery_epoch*")) == ["gallery_epoch001.png", "gallery_epoch002.png"]


def test_predict_on_video_writes_masks_and_one_line_per_frame(seg_run):
    from detseg.engine.predict import predict

    root, _, run = seg_run
    video = next((root / "cache").glob("shapes_*/video.mp4"))
    summary = predict(run, source=str(video), save=str(root / "seg.mp4"), jsonl=str(root / "seg.jsonl"))
    lines = [json.loads(line) for line in (root / "seg.jsonl").read_text().splitlines()]
    assert summary.frames_processed == len(lines) == 6
    assert "masks" not in summary.outputs  # colour masks go beside saved images, not videos
    for line in lines:
        assert set(line["fractions"]) == {"background", "circle", "square", "triangle"}
        assert sum(line["fractions"].values()) == pytest.approx(1.0, abs=5e-4)
    assert cv2.VideoCapture(str(root / "seg.mp4")).get(cv2.CAP_PROP_FRAME_COUNT) == 6


def test_predict_on_images_saves_colour_masks_and_rle_in_original_pixels(seg_run):
    """`--save` on images writes overlays and `masks/<name>.png`; `--set predict.rle=true`
    adds RLE masks to the JSONL that decode to exactly the saved colour masks."""
    from pycocotools import mask as mask_utils

    from detseg.engine.predict import predict
    from detseg.viz import class_color

    root, _, run = seg_run
    images = next((root / "cache").glob("shapes_*/val/images"))
    out = root / "pred"
    summary = predict(run, source=str(images), save=str(out), jsonl=str(root / "pred.jsonl"), overrides={"predict.rle": True})
    lines = [json.loads(line) for line in (root / "pred.jsonl").read_text().splitlines()]
    assert summary.frames_processed == len(lines) == 6
    assert summary.outputs["masks"] == str(out / "masks")
    for line in lines:
        name = Path(line["file"])
        painted = cv2.cvtColor(cv2.imread(str(out / "masks" / name.with_suffix(".png"))), cv2.COLOR_BGR2RGB)
        assert painted.shape[:2] == cv2.imread(str(images / name)).shape[:2]
        assert (out / name).is_file()  # the overlay
        for label, cls in enumerate(["background", "circle", "square", "triangle"]):
            coded = line["rle"].get(cls)
            decoded = np.zeros(painted.shape[:2], bool) if coded is None else mask_utils.decode({**coded, "counts": coded["counts"].encode()}).astype(bool)
            colour = (0, 0, 0) if cls == "background" else class_color(label)
            assert np.array_equal(decoded, (painted == colour).all(-1)), (name, cls)


def test_coco_polygons_train_a_segmenter_like_the_generators_masks(seg_run, tmp_path):
    """COCO instance polygons become semantic masks ("background" + the COCO classes) that
    agree with the shapes generator's own masks, and a run's saved names load the data back."""
    from detseg.data import read_semantic_mask
    from detseg.tasks import TASKS

    root, _, _ = seg_run
    val = next((root / "cache").glob("shapes_*/val"))
    split = {"annotations": str(val / "annotations.json"), "images": str(val)}
    cfg = load_config(None, {"model.kind": "unet", "data.format": "coco", "data.cache_dir": str(tmp_path), "data.train": split, "data.val": split})
    task = TASKS["unet"]
    data = task.load_data(cfg, "train")
    saved = task.prepare(cfg, data)
    assert saved.data.names == ["background", "circle", "square", "triangle"]
    again = task.load_data(saved, "val")  # as evaluate and predict load a run's data
    assert task.class_names(again) == saved.data.names
    for sample in again.samples:
        ours = read_semantic_mask(sample.semantic_mask_path, again.mask_lut())
        generated = read_semantic_mask(val / "masks" / sample.image_path.with_suffix(".png").name, again.mask_lut())
        assert np.mean(ours == generated) > 0.98  # polygons vs drawn shapes differ only on edges


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_export_gives_the_keras_class_maps(seg_run, fmt):
    """Exported class maps equal the Keras model's on the real validation images (>= 99.9% of
    pixels; float differences between runtimes can only flip near-tied pixels)."""
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
        pytest.importorskip("tf2onnx")
    from detseg.data import load_split, read_image
    from detseg.engine.export import export
    from detseg.engine.exported import open_exported
    from detseg.engine.runs import load_model

    _, cfg, run = seg_run
    runner, metadata = open_exported(export(run, fmt))
    assert metadata["task"] == "unet" and metadata["outputs"] == ["classes"]
    keras_segmenter = Segmenter.from_model(load_model(run / "best.keras"))
    exported = Segmenter(lambda images: runner(images)["classes"], metadata["input_size"])
    images = [read_image(s.image_path) for s in load_split(load_config(run / "config.yaml").data, "val").samples]
    same = [np.mean(a == b) for a, b in zip(keras_segmenter(images), exported(images), strict=True)]
    assert min(same) >= 0.999, same


def test_cli_rejects_detection_thresholds_for_a_segmenter(seg_run, capsys):
    root, _, run = seg_run
    video = next((root / "cache").glob("shapes_*/video.mp4"))
    res = cli_in_process(capsys, "predict", str(run), "--source", str(video), "--conf", "0.5")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "detseg: error: --conf and --iou are detection thresholds; a segmenter labels every pixel"
    ]
