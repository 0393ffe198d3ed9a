"""`kerascv:<name>` backbones: one-line errors without the extra or off TensorFlow (always run),
and, with keras-cv installed, a YOLO detector on one that trains, round-trips and matches
keras-cv's own model on the same pixels."""

from __future__ import annotations

import builtins
import subprocess
import sys

import keras
import numpy as np
import pytest

from detseg.backbones import get_backbone
from detseg.backbones.kerascv import ARCHITECTURES, LEVELS
from detseg.config import DetectorModelConfig
from detseg.errors import DetsegError
from tests.conftest import REPO_ROOT
from tests.heads.yolo_helpers import ANCHORS_64, draw_shapes

SIZE = 64

LOAD_WITHOUT_KERAS_CV = """
import sys
sys.modules["keras_cv"] = None  # any import of keras_cv now fails
import keras, numpy as np, detseg.heads
saved = np.load(sys.argv[1] + "/raw.npz")
loaded = keras.saving.load_model(sys.argv[1] + "/yolo.keras")
out = loaded(saved["x"], training=False)
assert set(out) == set(saved.files) - {"x"}
for level, value in out.items():
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(value), saved[level], err_msg=level)
"""


def one_line_error(**kwargs) -> str:
    with pytest.raises(DetsegError) as caught:
        get_backbone("kerascv:yolo_v8_xs", (SIZE, SIZE, 3), **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_missing_extra_is_a_one_line_error(monkeypatch):
    real_import = builtins.__import__

    def no_keras_cv(name, *args, **kwargs):
        if name.split(".")[0] == "keras_cv":
            raise ModuleNotFoundError("No module named 'keras_cv'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_keras_cv)
    monkeypatch.setattr(keras.backend, "backend", lambda: "tensorflow")
    assert "pip install 'detseg[kerascv]'" in one_line_error()


def test_another_backend_is_a_one_line_error(monkeypatch):
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    assert "need the TensorFlow backend, not 'jax'" in one_line_error()


def test_unknown_name_preset_weights_and_width_are_one_line_errors():
    with pytest.raises(DetsegError, match="valid: kerascv:yolo_v8_xs, kerascv:yolo_v8_s") as caught:
        get_backbone("kerascv:YOLOV8Backbone")
    assert "\n" not in str(caught.value)
    assert "keras-cv presets download from Kaggle" in one_line_error(weights="yolo_v8_xs_backbone_coco")
    assert "has no width multiplier" in one_line_error(width=0.5)


@pytest.fixture(scope="module")
def keras_cv():
    module = pytest.importorskip("keras_cv")
    if keras.backend.backend() != "tensorflow":
        pytest.skip("keras-cv backbones run on the TensorFlow backend only")
    return module


def test_levels_match_feature_info_and_keras_cv_on_raw_pixels(keras_cv):
    keras.utils.set_random_seed(0)
    ours = get_backbone("kerascv:yolo_v8_xs", (SIZE, SIZE, 3))
    class_name, arguments = ARCHITECTURES["yolo_v8_xs"]
    # keras-cv's own model scaling 0..255 pixels itself: the reference of the single scaling.
    source = getattr(keras_cv.models, class_name)(
        **arguments, include_rescaling=True, input_shape=(SIZE, SIZE, 3)
    )
    source.set_weights(ours.get_weights())
    names = source.pyramid_level_inputs
    reference = keras.Model(source.input, {k: source.get_layer(names[k]).output for k in LEVELS})
    pixels = np.random.default_rng(0).integers(0, 256, (2, SIZE, SIZE, 3)).astype(np.uint8)
    got, want = ours.predict(pixels, verbose=0), reference.predict(pixels.astype(np.float32), verbose=0)
    assert list(ours.feature_info) == list(LEVELS)
    for level, (stride, channels) in ours.feature_info.items():
        assert got[level].shape == (2, SIZE // stride, SIZE // stride, channels)
        np.testing.assert_allclose(got[level], want[level], rtol=1e-5, atol=1e-5, err_msg=level)


def test_a_local_weights_file_loads(keras_cv, tmp_path):
    keras.utils.set_random_seed(0)
    saved = get_backbone("kerascv:yolo_v8_xs", (SIZE, SIZE, 3))
    saved.save_weights(tmp_path / "backbone.weights.h5")
    keras.utils.set_random_seed(1)
    loaded = get_backbone("kerascv:yolo_v8_xs", (SIZE, SIZE, 3), weights=tmp_path / "backbone.weights.h5")
    pixels = np.random.default_rng(0).integers(0, 256, (1, SIZE, SIZE, 3)).astype(np.float32)
    want, got = saved.predict(pixels, verbose=0), loaded.predict(pixels, verbose=0)
    for level in LEVELS:
        np.testing.assert_array_equal(got[level], want[level], err_msg=level)


def test_yolo_on_kerascv_trains_a_step_and_round_trips(keras_cv, tmp_path):
    from detseg.heads import build_yolo

    cfg = DetectorModelConfig(
        backbone="kerascv:yolo_v8_xs", input_size=SIZE, yolo={"width": 0.125}
    )
    keras.utils.set_random_seed(0)
    model = build_yolo(cfg, 3, ANCHORS_64)
    images, boxes, labels = draw_shapes(4, SIZE, seed=0)
    targets = model.make_target_encoder()(boxes, labels)
    # Eager: tracing the graph step costs ~30 s on a busy 2-core CPU, the eager step ~2 s.
    model.compile(optimizer=keras.optimizers.Adam(1e-3), run_eagerly=True)
    before = [w.copy() for w in model.get_weights()]
    loss = model.train_on_batch(images, targets, return_dict=True)["loss"]
    assert np.isfinite(loss)
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))

    model.save(tmp_path / "yolo.keras")
    x = images.astype(np.float32)
    raw = {level: keras.ops.convert_to_numpy(out) for level, out in model(x, training=False).items()}
    assert set(raw) == set(model.levels)
    np.savez(tmp_path / "raw.npz", x=x, **raw)
    # The file holds core Keras layers only: it loads in safe mode where keras_cv cannot import.
    subprocess.run([sys.executable, "-c", LOAD_WITHOUT_KERAS_CV, str(tmp_path)], check=True, cwd=REPO_ROOT, timeout=120)


def test_unet_on_kerascv_decodes_its_three_levels_to_full_resolution(keras_cv):
    from detseg.heads.unet import build_unet

    model = build_unet(2, backbone="kerascv:resnet18", input_shape=(SIZE, SIZE, 3))
    assert model.levels == LEVELS
    assert tuple(model(np.zeros((1, SIZE, SIZE, 3), np.float32)).shape) == (1, SIZE, SIZE, 2)
