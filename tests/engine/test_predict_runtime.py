"""`detseg predict` runs a `.keras` detector on onnxruntime through a cached ONNX export, with
the Keras path's detections (`predict.runtime`)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from detseg.config import config_from_dict, dump_config
from detseg.engine import onnx_cache
from detseg.engine.predict import predict
from detseg.errors import DetsegError
from tests.engine.test_export import ONNX_SKIP, confident_detector, tiny_config
from tests.heads.yolo_helpers import draw_shapes

pytest.importorskip("onnxruntime", reason=ONNX_SKIP)
pytest.importorskip("tf2onnx", reason=ONNX_SKIP)


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    """Three images of another size than the model's input (letterboxed on the way in)."""
    folder = tmp_path_factory.mktemp("frames")
    for i, image in enumerate(draw_shapes(3, 64, seed=11)[0]):
        cv2.imwrite(str(folder / f"{i}.png"), cv2.cvtColor(cv2.resize(image, (128, 96)), cv2.COLOR_RGB2BGR))
    return folder


@pytest.fixture
def run_dir(tmp_path):
    dump_config(tiny_config(), tmp_path / "config.yaml")
    confident_detector(draw_shapes(4, 64, seed=1)[0]).save(tmp_path / "best.keras")
    return tmp_path


def records(run_dir, frames, out, runtime, **kwargs) -> list[dict]:
    predict(run_dir, source=str(frames), jsonl=str(out), overrides={"predict.runtime": runtime}, **kwargs)
    return [json.loads(line) for line in out.read_text().splitlines()]


def cache_entries(run_dir) -> list[str]:
    return sorted(p.name for p in (run_dir / onnx_cache.CACHE_DIR).iterdir())


def test_onnxruntime_path_gives_the_keras_detections_and_exports_once(run_dir, frames, tmp_path, monkeypatch):
    keras_out = records(run_dir, frames, tmp_path / "keras.jsonl", "keras")
    assert not (run_dir / onnx_cache.CACHE_DIR).exists()  # the Keras path exports nothing
    onnx_out = records(run_dir, frames, tmp_path / "onnx.jsonl", "auto")
    assert sum(len(r["boxes"]) for r in keras_out) > 3
    for ours, theirs in zip(onnx_out, keras_out, strict=True):
        assert ours["labels"] == theirs["labels"]
        np.testing.assert_allclose(ours["boxes"], theirs["boxes"], atol=0.1)  # pixels of the 128x96 image
        np.testing.assert_allclose(ours["scores"], theirs["scores"], atol=1e-3)  # JSONL rounds them
    (artefact, metadata) = cache_entries(run_dir)
    assert artefact.startswith("best-") and artefact.endswith(".onnx") and metadata == artefact + ".json"

    # Other thresholds are baked into a new export, which replaces the stale one.
    strict = records(run_dir, frames, tmp_path / "strict.jsonl", "onnxruntime", score_thr=0.6)
    (second, _) = cache_entries(run_dir)
    assert second != artefact
    kept = sorted(s for r in onnx_out for s in r["scores"] if s >= 0.6)
    assert 0 < len(kept) < sum(len(r["scores"]) for r in onnx_out)
    np.testing.assert_allclose(sorted(s for r in strict for s in r["scores"]), kept, atol=1e-6)

    def no_export(*args, **kwargs):
        raise AssertionError("the cached export should have been reused")

    monkeypatch.setattr("detseg.engine.export.export_model", no_export)
    again = records(run_dir, frames, tmp_path / "again.jsonl", "onnxruntime", score_thr=0.6)
    assert again == strict


def test_asking_for_onnxruntime_without_it_is_a_one_line_error(run_dir, frames, tmp_path, monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(DetsegError, match=r"predict.runtime is onnxruntime but onnx, onnxruntime, tf2onnx not installed"):
        records(run_dir, frames, tmp_path / "x.jsonl", "onnxruntime")
    assert len(records(run_dir, frames, tmp_path / "y.jsonl", "auto")) == 3  # auto falls back to Keras


def test_runtime_is_refused_for_tasks_without_an_onnxruntime_path():
    with pytest.raises(DetsegError, match="predict.runtime: not used by model.kind 'unet'"):
        config_from_dict({"model": {"kind": "unet"}, "predict": {"runtime": "onnxruntime"}})
