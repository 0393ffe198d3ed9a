"""`detseg export --format onnx --int8`: the convolutions quantized to int8 (QDQ, per-channel),
calibrated on the config's training images; inputs, outputs and post-processing unchanged."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from detseg.cli import main
from detseg.config import config_from_dict, dump_config, load_config
from detseg.data.images import letterbox, read_image
from detseg.data.splits import load_split
from detseg.engine.export import export
from detseg.engine.quantize import calibration_images
from detseg.engine.runs import read_metadata
from tests.engine.test_export import ONNX_SKIP, confident_detector, exported_detector, tiny_config
from tests.heads.yolo_helpers import draw_shapes

pytest.importorskip("onnxruntime", reason=ONNX_SKIP)
pytest.importorskip("tf2onnx", reason=ONNX_SKIP)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A detector's run folder whose config names a small shapes training split."""
    folder = tmp_path_factory.mktemp("run")
    shapes = {"num_train": 12, "num_val": 2, "image_size": 96, "min_size": 16, "max_size": 48}
    data = {"builtin": "shapes", "cache_dir": str(folder / "cache"), "shapes": shapes}
    settings = tiny_config().model_dump(mode="json", exclude_defaults=True)
    dump_config(config_from_dict({**settings, "data": {**settings["data"], **data}}), folder / "config.yaml")
    confident_detector(draw_shapes(4, 64, seed=1)[0]).save(folder / "best.keras")
    return folder


def test_calibration_images_are_letterboxed_training_images_spread_over_the_split(run_dir):
    dataset = load_split(load_config(run_dir / "config.yaml").data, "train")
    images = calibration_images(dataset, 64, count=4)
    assert images.shape == (4, 64, 64, 3) and images.dtype == np.uint8
    # np.linspace(0, 11, 4).round() picks images 0, 4, 7 and 11 of the split
    expected = letterbox(read_image(dataset.samples[7].image_path), 64)[0]
    np.testing.assert_array_equal(images[2], expected)


def test_int8_export_quantizes_the_convolutions_and_keeps_the_interface(run_dir):
    """The graph's arithmetic is checked here; its accuracy on a trained model (AP of int8 vs
    float32) is measured by `benchmarks/bench_peers.py --sections accuracy`."""
    int8_path = export(run_dir, "onnx", int8=True)
    assert int8_path.name == "best_int8.onnx"
    graph = onnx.load(str(int8_path)).graph
    ops = [node.op_type for node in graph.node]
    metadata = read_metadata(int8_path)
    kept_float = metadata["int8"].pop("float_convs")
    assert metadata["int8"] == {"ops": ["Conv"], "calibration_images": 12}
    # The head's output convs (P4_pred, P5_pred: box, objectness and class outputs) stay float32.
    assert len(kept_float) == 2
    assert [level for level in ("P3", "P4", "P5") if any(f"/{level}_pred" in name for name in kept_float)] == ["P4", "P5"]
    float_weights = {n.input[1] for n in graph.node if n.op_type == "Conv" and n.name in kept_float}
    assert {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT} >= float_weights
    quantized = ops.count("Conv") - len(kept_float)
    assert quantized > 0 and ops.count("DequantizeLinear") >= 2 * quantized  # each conv's input and weights
    int8_weights = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(int8_weights) >= quantized
    assert "NonMaxSuppression" in ops  # the post-processing is still inside
    assert [i.name for i in graph.input] == ["images"] and sorted(o.name for o in graph.output) == sorted(metadata["outputs"])

    (detections,) = exported_detector(int8_path)([draw_shapes(1, 64, seed=3)[0][0]])
    assert detections["boxes"].shape[1:] == (4,) and len(detections["boxes"]) == len(detections["labels"])


def test_int8_is_refused_for_other_formats(run_dir, capsys):
    assert main(["export", str(run_dir), "--format", "tflite", "--int8"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "detseg: error: int8 quantization is for ONNX exports (--format onnx), not tflite"
    ]
