"""Every backbone declares its pyramid truthfully and round-trips through `.keras`."""

import math
import urllib.error

import keras
import numpy as np
import pytest

from detseg.backbones import BACKBONES, feature_info, get_backbone
from detseg.backbones.preprocess import FAMILY_MODES, ImagenetPreprocess
from detseg.backbones.pyramid import scales_pixels
from detseg.errors import DetsegError

# The papers' channels per level at width 1.0 (stride = 2**level).
PAPER_CHANNELS = {
    "lenet5": {"P1": 6, "P2": 16},  # S2, S4
    "fashion_cnn": {"P1": 64, "P2": 128, "P3": 256},  # the three max pools
    "alexnet": {"P3": 256, "P4": 256, "P5": 256},  # conv2 + LRN, conv5, pool3
    "googlenet": {"P3": 480, "P4": 832, "P5": 1024},  # inception 3b, 4e, 5b
    "vgg16": {"P3": 256, "P4": 512, "P5": 512},  # block3..5 pools
    "vgg19": {"P3": 256, "P4": 512, "P5": 512},
    "resnet18": {"P3": 128, "P4": 256, "P5": 512},  # conv3_x..conv5_x
    "resnet34": {"P3": 128, "P4": 256, "P5": 512},
    "resnet50": {"P3": 512, "P4": 1024, "P5": 2048},  # bottleneck x4
    "xception": {"P3": 256, "P4": 728, "P5": 2048},  # entry block 3, middle flow, exit
    "se_resnet": {"P3": 128, "P4": 256, "P5": 512},
    "se_resnet50": {"P3": 512, "P4": 1024, "P5": 2048},
    "darknet53": {"P3": 256, "P4": 512, "P5": 1024},
    "darknet_tiny": {"P3": 128, "P4": 256, "P5": 512},
    # MobileNetV2's block_6_expand_relu, block_13_expand_relu, out_relu (no width here).
    "applications:MobileNetV2": {"P3": 192, "P4": 576, "P5": 1280},
}
WIDTH = 0.25  # every paper channel count above is divisible by 4 except LeNet's 6 (-> 2)
SIDE = 64


def test_every_backbone_has_expected_channels():
    assert set(BACKBONES) == {n for n in PAPER_CHANNELS if ":" not in n}


def _build(name, input_shape):
    kwargs = {} if name.startswith("applications:") else {"width": WIDTH}
    return get_backbone(name, input_shape, **kwargs)


def _expected_info(name):
    scale = 1.0 if name.startswith("applications:") else WIDTH
    return {
        level: (2 ** int(level[1:]), max(1, round(channels * scale)))
        for level, channels in PAPER_CHANNELS[name].items()
    }


def _to_numpy(outputs):
    return {k: keras.ops.convert_to_numpy(v) for k, v in outputs.items()}


def _forward_and_check_pyramid(name, model, forward):
    """Run `model` on a 64x64 batch; check levels, strides, channels, finiteness."""
    expected = _expected_info(name)
    assert model.feature_info == expected
    assert feature_info(model) == expected
    assert scales_pixels(model)  # takes pixels 0..255 and scales them itself
    x = np.random.default_rng(0).integers(0, 256, (2, SIDE, SIDE, 3), dtype=np.uint8)
    outputs = forward(model, x)
    assert list(outputs) == list(expected)
    for level, (stride, channels) in expected.items():
        side = math.ceil(SIDE / stride)
        assert outputs[level].shape == (2, side, side, channels), level
        assert np.isfinite(outputs[level]).all(), level
    return x, outputs


@pytest.mark.parametrize("name", list(PAPER_CHANNELS))
def test_backbone_pyramid_and_keras_round_trip(name, tmp_path, forward):
    model = _build(name, (None, None, 3))
    x, outputs = _forward_and_check_pyramid(name, model, forward)
    path = tmp_path / "backbone.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert feature_info(loaded) == _expected_info(name)
    for level, values in forward(loaded, x).items():
        np.testing.assert_allclose(values, outputs[level], rtol=1e-5, atol=1e-6)


# 3-12 s each to compile under JAX: slow there, while their TensorFlow case runs by default.
SLOW_UNDER_JAX = {"googlenet", "applications:MobileNetV2", "resnet50", "se_resnet", "se_resnet50"}


@pytest.mark.jax
@pytest.mark.skipif(
    keras.backend.backend() != "jax",
    reason="under TensorFlow test_backbone_pyramid_and_keras_round_trip covers it",
)
@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_UNDER_JAX else n for n in PAPER_CHANNELS]
)
def test_backbone_pyramid_under_jax(name, forward):
    _forward_and_check_pyramid(name, _build(name, (None, None, 3)), forward)


def test_lenet5_valid_padding_follows_the_paper_sizes():
    # 32 -> C1 28 -> S2 14 -> C3 10 -> S4 5, as in LeCun et al. 1998.
    model = get_backbone("lenet5", (32, 32, 1), padding="valid")
    assert model.output["P1"].shape == (None, 14, 14, 6)
    assert model.output["P2"].shape == (None, 5, 5, 16)


def test_alexnet_valid_padding_follows_the_paper_sizes():
    # 227 -> conv1 (11x11/4) 55 -> pool 27 -> pool 13 -> pool 6.
    model = get_backbone("alexnet", (227, 227, 3), padding="valid", width=WIDTH)
    assert [model.output[k].shape[1] for k in ("P3", "P4", "P5")] == [27, 13, 6]


@pytest.mark.parametrize(
    ("app", "shape", "layers"),
    [
        # The feature layers TF's segmentation tutorial and SSDLite take from MobileNetV2.
        (
            "MobileNetV2",
            (None, None, 3),
            ("block_6_expand_relu", "block_13_expand_relu", "out_relu"),
        ),
        # InceptionV3's block outputs, not a branch inside the next block, even on its
        # smallest input (75 px: "valid" paddings leave 7, 3 and 1 px maps).
        ("InceptionV3", (75, 75, 3), ("mixed2", "mixed7", "mixed10")),
    ],
)
def test_application_levels_are_the_block_outputs(app, shape, layers):
    model = get_backbone(f"applications:{app}", shape)
    producers = [model.output[k]._keras_history.operation.name for k in ("P3", "P4", "P5")]
    assert producers == list(layers)


def test_unknown_names_suggest_the_closest():
    with pytest.raises(DetsegError, match=r"did you mean 'resnet34'.*valid: lenet5, alexnet"):
        get_backbone("resnet43")
    with pytest.raises(DetsegError, match="did you mean applications:ResNet50"):
        get_backbone("applications:Resnet50")


def test_unknown_builder_arguments_are_user_errors():
    with pytest.raises(DetsegError, match=r"'vgg16' takes no argument padding \(valid: width"):
        get_backbone("vgg16", padding="valid")
    with pytest.raises(DetsegError, match="takes no argument width"):
        get_backbone("applications:MobileNetV2", width=0.5)


def test_width_must_be_positive():
    with pytest.raises(DetsegError, match="width must be > 0, got 0"):
        get_backbone("resnet18", width=0)


@pytest.mark.filterwarnings("ignore:Skipping nested container")  # the wrong-width load
def test_local_weights_file_is_loaded_and_missing_file_is_a_user_error(tmp_path):
    source = get_backbone("darknet_tiny", width=WIDTH)
    path = tmp_path / "tiny.weights.h5"
    source.save_weights(path)
    restored = get_backbone("darknet_tiny", width=WIDTH, weights=str(path))
    x = np.random.default_rng(1).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    for level, values in _to_numpy(restored(x)).items():
        np.testing.assert_array_equal(values, _to_numpy(source(x))[level])

    with pytest.raises(DetsegError, match="weights file not found"):
        get_backbone("darknet_tiny", weights=str(tmp_path / "missing.weights.h5"))
    with pytest.raises(DetsegError, match="cannot load these weights"):
        get_backbone("darknet_tiny", width=0.5, weights=str(path))
    with pytest.raises(DetsegError, match="no downloadable 'imagenet' weights"):
        get_backbone("resnet18", weights="imagenet")


def test_application_imagenet_offline_is_a_clear_user_error(tmp_path, monkeypatch):
    from keras.src.backend import config
    from keras.src.utils import file_utils

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(config, "keras_home", lambda: str(tmp_path))  # empty cache
    monkeypatch.setattr(file_utils, "urlretrieve", no_network)
    with pytest.raises(DetsegError, match="could not download the ImageNet weights.*local path"):
        get_backbone("applications:MobileNetV2", (96, 96, 3), weights="imagenet")


def test_application_accepts_a_local_weights_file(tmp_path):
    source = keras.applications.MobileNetV2(
        include_top=False, weights=None, input_shape=(64, 64, 3)
    )
    path = tmp_path / "mobilenet.weights.h5"
    source.save_weights(path)
    model = get_backbone("applications:MobileNetV2", (64, 64, 3), weights=str(path))
    x = np.random.default_rng(2).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)  # detseg's input
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(model(x)["P5"]),
        keras.ops.convert_to_numpy(source(keras.applications.mobilenet_v2.preprocess_input(x.astype("float32")))),
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.parametrize("family", sorted(FAMILY_MODES))
def test_imagenet_preprocess_matches_the_familys_preprocess_input(family):
    """On 0..255 pixels (uint8, as the loaders send them), the layer gives what
    keras.applications.<family>.preprocess_input gives on the same pixels (caffe BGR mean,
    tf -1..1, torch mean/std, or pass-through): the model's one scaling, not a second one."""
    x = np.random.default_rng(3).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    expected = getattr(keras.applications, family).preprocess_input(x.astype("float32"))
    layer = ImagenetPreprocess(FAMILY_MODES[family])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x)), keras.ops.convert_to_numpy(expected), rtol=1e-5, atol=1e-4)
    assert ImagenetPreprocess.from_config(layer.get_config()).mode == FAMILY_MODES[family]


def test_every_application_family_has_a_known_preprocessing():
    from detseg.backbones.applications import application_names
    from detseg.backbones.preprocess import family_mode

    modes = {name: family_mode(getattr(keras.applications, name)) for name in application_names()}
    assert modes["ResNet50"] == "caffe" and modes["Xception"] == "tf" and modes["DenseNet121"] == "torch"
    assert modes["EfficientNetB0"] == "none"
