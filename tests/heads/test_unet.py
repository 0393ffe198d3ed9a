"""UNetSegmenter: sizes on every encoder, skip connections, losses by hand, decoding, round trips, overfit."""

from __future__ import annotations

import json
import math

import keras
import numpy as np
import pytest

from detseg.backbones import BACKBONES, get_backbone
from detseg.config import ShapesConfig
from detseg.data import IGNORE_INDEX, load_shapes, read_image, read_semantic_mask
from detseg.errors import DetsegError
from detseg.heads.unet import UNetSegmenter, build_unet, segmentation_loss_terms, unet_encoder
from detseg.metrics.segmentation import SegmentationMetrics
from tests.training import compile_built


def to_numpy(x) -> np.ndarray:
    return keras.ops.convert_to_numpy(x)


def random_images(batch: int, size: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    """uint8 pixels, as the loaders send them."""
    return np.random.default_rng(seed).integers(0, 256, (batch, size, size, channels), dtype=np.uint8)


def small_unet(num_classes: int = 3, size: int = 32, channels: int = 3, depth: int = 3, **kwargs) -> UNetSegmenter:
    """The paper's encoder with 4 / 8 / 16 / 32 filters at strides 1 / 2 / 4 / 8 (at depth 3)."""
    keras.utils.set_random_seed(0)
    encoder = unet_encoder((size, size, channels), width=1 / 16, depth=depth)
    return UNetSegmenter(encoder, num_classes, **kwargs)


@pytest.mark.parametrize("name", [*BACKBONES, "unet"])
def test_logits_have_the_input_size_on_every_encoder(name):
    keras.utils.set_random_seed(0)
    model = build_unet(3, name, (64, 64, 3), width=0.25)
    logits = to_numpy(model(random_images(2, 64)))
    assert logits.shape == (2, 64, 64, 3) and logits.dtype == np.float32
    assert np.isfinite(logits).all()
    # The last stage's skip: the encoder's own stride-1 level, else the 3-channel image.
    full_resolution = model.encoder.feature_info.get("P0", (1, 3))
    assert model.get_layer("P0_concat").input[1].shape == (None, 64, 64, full_resolution[1])


def decoder_taps(model: UNetSegmenter) -> keras.Model:
    """The model's stage outputs {"P2": [B, S/4, S/4, f], ..., "P0": ...} and its logits."""
    stages = {
        f"P{k}": model.get_layer(f"P{k}_dec_2_act").output
        for k in range(int(math.log2(max(s for s, _ in model.encoder.feature_info.values()))))
    }
    return keras.Model(model.input, {**stages, "logits": model.output})


@pytest.mark.parametrize(
    "name, level",
    [
        ("unet", "P2"),
        ("unet", "P1"),
        ("unet", "P0"),
        ("darknet_tiny", "P3"),
        ("darknet_tiny", "P0"),
    ],
)
def test_each_skip_connection_feeds_the_decoder_stage_at_its_stride(name, level):
    keras.utils.set_random_seed(0)
    sizes = {"width": 1 / 16, "depth": 3} if name == "unet" else {"width": 0.125}
    model = build_unet(3, name, (32, 32, 3), **sizes)
    stride = 2 ** int(level[1:])
    concat = model.get_layer(f"{level}_concat")
    upsampled, skip = concat.input
    skip_channels = model.encoder.feature_info.get(level, (1, 3))[1]  # P0 of darknet: the image
    assert skip.shape == (None, 32 // stride, 32 // stride, skip_channels)
    assert upsampled.shape[1:3] == skip.shape[1:3]

    taps = decoder_taps(model)
    x = random_images(2, 32)
    before = {key: to_numpy(value) for key, value in taps(x).items()}
    # Cut the skip: zero the input channels of the stage's first conv that read the skip
    # (Concatenate puts them after the upsampled channels).
    conv = model.get_layer(f"{level}_dec_1_conv")
    kernel = to_numpy(conv.kernel).copy()
    kernel[:, :, upsampled.shape[-1] :, :] = 0
    conv.kernel.assign(kernel)
    after = {key: to_numpy(value) for key, value in taps(x).items()}

    for coarser in [key for key in before if key.startswith("P") and int(key[1:]) > int(level[1:])]:
        np.testing.assert_array_equal(after[coarser], before[coarser], err_msg=coarser)
    assert np.abs(after[level] - before[level]).mean() > 1e-2 * np.abs(before[level]).mean()
    assert not np.allclose(after["logits"], before["logits"])


# === Losses by hand ===

# One image of 1 x 3 pixels and 3 classes:
#   pixel 0: logits [0, 0, 0]               -> p = [1/3, 1/3, 1/3], label 0
#   pixel 1: logits [0, ln 2, ln 5]         -> p = [1/8, 2/8, 5/8], label 2
#   pixel 2: logits [50, -50, 0]            -> ignored (label 255): contributes nothing
LOGITS = np.array([[[[0, 0, 0], [0, math.log(2), math.log(5)], [50, -50, 0]]]], np.float32)
LABELS = np.array([[[0, 2, IGNORE_INDEX]]], np.int32)


@pytest.mark.jax
def test_cross_entropy_by_hand_with_class_weights_and_ignored_pixels():
    ce, _ = segmentation_loss_terms(LABELS, LOGITS)
    # (-ln 1/3 - ln 5/8) / 2 = (1.098612 + 0.470004) / 2
    np.testing.assert_allclose(to_numpy(ce), (math.log(3) + math.log(8 / 5)) / 2, rtol=1e-6)
    ce, _ = segmentation_loss_terms(LABELS, LOGITS, class_weights=[2.0, 1.0, 0.5])
    # weights 2 (class 0) and 0.5 (class 2): (2 * 1.098612 + 0.5 * 0.470004) / (2 + 0.5) = 0.972891
    np.testing.assert_allclose(
        to_numpy(ce), (2 * math.log(3) + 0.5 * math.log(8 / 5)) / 2.5, rtol=1e-6
    )


@pytest.mark.jax
def test_dice_by_hand_over_the_classes_present():
    # Class 0: intersection 1/3, sum p = 1/3 + 1/8 = 11/24, sum t = 1.
    # Class 2: intersection 5/8, sum p = 1/3 + 5/8 = 23/24, sum t = 1.
    # Class 1 has no label: left out (its p = 1/3 + 2/8 would otherwise count).
    _, dice = segmentation_loss_terms(LABELS, LOGITS, smooth=1.0)
    # (2 * 1/3 + 1) / (11/24 + 1 + 1) = 40/59;  (2 * 5/8 + 1) / (23/24 + 1 + 1) = 54/71
    np.testing.assert_allclose(to_numpy(dice), 1 - (40 / 59 + 54 / 71) / 2, rtol=1e-6)
    _, dice = segmentation_loss_terms(LABELS, LOGITS, smooth=0.0)
    # (2/3) / (35/24) = 16/35;  (5/4) / (47/24) = 30/47
    np.testing.assert_allclose(to_numpy(dice), 1 - (16 / 35 + 30 / 47) / 2, rtol=1e-6)


@pytest.mark.jax
def test_binary_losses_by_hand_are_sigmoid_bce_and_dice_over_both_labels():
    # One logit z per pixel: z = [0, ln 3] -> p(foreground) = [1/2, 3/4]; labels [1, 0].
    logits = np.array([[[[0.0], [math.log(3)]]]], np.float32)
    labels = np.array([[[1, 0]]], np.int32)
    ce, dice = segmentation_loss_terms(labels, logits, smooth=1.0)
    # BCE: (-ln 1/2 - ln(1 - 3/4)) / 2 = (ln 2 + ln 4) / 2 = 1.5 ln 2
    np.testing.assert_allclose(to_numpy(ce), 1.5 * math.log(2), rtol=1e-6)
    # Background: p = [1/2, 1/4], t = [0, 1]: (2 * 1/4 + 1) / (3/4 + 1 + 1) = 6/11
    # Foreground: p = [1/2, 3/4], t = [1, 0]: (2 * 1/2 + 1) / (5/4 + 1 + 1) = 8/13
    np.testing.assert_allclose(to_numpy(dice), 1 - (6 / 11 + 8 / 13) / 2, rtol=1e-6)
    ce, _ = segmentation_loss_terms(labels, logits, class_weights=[3.0, 1.0])
    # (1 * ln 2 + 3 * ln 4) / (1 + 3) = 7/4 ln 2
    np.testing.assert_allclose(to_numpy(ce), 1.75 * math.log(2), rtol=1e-6)


@pytest.mark.jax
def test_sample_weight_zero_drops_an_image_and_nothing_labelled_gives_zero():
    other = np.full_like(LOGITS, 3.0)
    logits = np.concatenate([LOGITS, other])
    labels = np.concatenate([LABELS, np.array([[[1, 1, 1]]], np.int32)])
    alone = [to_numpy(t) for t in segmentation_loss_terms(LABELS, LOGITS)]
    weighted = [to_numpy(t) for t in segmentation_loss_terms(labels, logits, sample_weight=[1, 0])]
    np.testing.assert_allclose(weighted, alone, rtol=1e-6)
    ignored = np.full_like(LABELS, IGNORE_INDEX)
    assert [float(to_numpy(t)) for t in segmentation_loss_terms(ignored, LOGITS)] == [0.0, 0.0]


def test_compute_loss_returns_the_chosen_terms_and_logs_both():
    ce, dice = (float(to_numpy(t)) for t in segmentation_loss_terms(LABELS, LOGITS))
    for loss, expected in [("ce", ce), ("dice", dice), ("ce+dice", ce + dice)]:
        model = small_unet(loss=loss)
        total = model.compute_loss(y=LABELS, y_pred=LOGITS)
        np.testing.assert_allclose(to_numpy(total), expected, rtol=1e-6)
        assert float(to_numpy(model.ce_loss_tracker.result())) == pytest.approx(ce, rel=1e-6)
        assert float(to_numpy(model.dice_loss_tracker.result())) == pytest.approx(dice, rel=1e-6)


@pytest.mark.jax
def test_all_background_and_all_ignored_batches_give_finite_losses_and_gradients():
    # One pooling: the losses see the same logits whatever the depth, and JAX compiles less.
    model = small_unet(depth=1, loss="ce+dice", class_weights=[1.0, 2.0, 2.0])
    # Plain SGD: a non-finite gradient would show in the weights after one step.
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    x = random_images(2, 32)
    start = [to_numpy(w).copy() for w in model.trainable_weights]

    logs = model.train_on_batch(x, np.full((2, 32, 32), IGNORE_INDEX, np.int32), return_dict=True)
    assert (logs["loss"], logs["ce_loss"], logs["dice_loss"]) == (0.0, 0.0, 0.0)
    ignored = [to_numpy(w) for w in model.trainable_weights]
    for before, after in zip(start, ignored, strict=True):
        np.testing.assert_array_equal(after, before)  # zero gradients: nothing labelled

    logs = model.train_on_batch(x, np.zeros((2, 32, 32), np.int32), return_dict=True)
    assert all(np.isfinite(logs[key]) and logs[key] > 0 for key in ("loss", "ce_loss", "dice_loss"))
    background = [to_numpy(w) for w in model.trainable_weights]
    assert all(np.isfinite(w).all() for w in background)
    assert (
        sum(not np.array_equal(a, b) for a, b in zip(ignored, background, strict=True))
        > len(background) // 2
    )


# === Decoding and round trips ===


def constant_logits(model: UNetSegmenter, bias) -> UNetSegmenter:
    """Zero the logits conv's kernel so that every pixel's logits equal `bias` [K]."""
    head = model.get_layer("logits")
    head.kernel.assign(np.zeros(head.kernel.shape, np.float32))
    head.bias.assign(np.asarray(bias, np.float32))
    return model


def test_predict_returns_the_class_map_or_probabilities():
    x = random_images(3, 32)
    model = constant_logits(small_unet(3), [0.1, 2.0, -1.0])
    classes = model.predict(x, verbose=0)
    assert classes.shape == (3, 32, 32) and classes.dtype == np.int32
    assert (classes == 1).all()
    probs = constant_logits(
        UNetSegmenter.from_config({**model.get_config(), "output_probabilities": True}),
        [0.1, 2.0, -1.0],
    ).predict(x, verbose=0)
    softmax = np.exp([0.1, 2.0, -1.0]) / np.exp([0.1, 2.0, -1.0]).sum()
    assert probs.shape == (3, 32, 32, 3)
    np.testing.assert_allclose(probs, np.broadcast_to(softmax, probs.shape), rtol=1e-5)

    # Binary on grey images: one logit; class 1 where sigmoid(z) > 0.5, i.e. z > 0.
    grey = random_images(2, 32, channels=1)
    binary = small_unet(1, channels=1)
    assert to_numpy(binary(grey)).shape == (2, 32, 32, 1)
    for bias, label in [(-0.3, 0), (0.3, 1)]:
        binary = UNetSegmenter.from_config(binary.get_config())
        classes = constant_logits(binary, [bias]).predict(grey, verbose=0)
        assert classes.shape == (2, 32, 32) and (classes == label).all()
    probs = constant_logits(
        UNetSegmenter.from_config({**binary.get_config(), "output_probabilities": True}), [-0.3]
    ).predict(grey, verbose=0)
    np.testing.assert_allclose(probs, np.full((2, 32, 32, 1), 1 / (1 + math.exp(0.3))), rtol=1e-5)


NON_DEFAULTS = {
    "decoder_filters": [12, 10, 6],
    "upsampling": "bilinear",
    "dropout": 0.25,
    "loss": "ce+dice",
    "class_weights": [0.5, 1.0, 2.0],
    "ignore_index": 254,
    "dice_smooth": 0.5,
    "output_probabilities": True,
}


def test_get_config_then_from_config_rebuilds_the_same_model():
    model = small_unet(3, **NON_DEFAULTS)
    config = model.get_config()
    assert {key: config[key] for key in NON_DEFAULTS} == NON_DEFAULTS
    clone = UNetSegmenter.from_config(config)
    assert json.dumps(clone.get_config(), sort_keys=True) == json.dumps(config, sort_keys=True)
    assert clone.get_layer("P2_up").filters == 12 and clone.get_layer("P0_dropout").rate == 0.25
    clone.set_weights(model.get_weights())
    x = random_images(2, 32)
    np.testing.assert_array_equal(to_numpy(clone(x)), to_numpy(model(x)))


# Under JAX the transpose variant runs (it also covers predict_step's class maps there).
@pytest.mark.parametrize("upsampling", [pytest.param("transpose", marks=pytest.mark.jax), "bilinear"])
def test_keras_round_trip_gives_identical_predictions(upsampling, tmp_path):
    model = small_unet(3, upsampling=upsampling, dropout=0.1)
    x = random_images(4, 32, seed=1)
    model.save(tmp_path / "unet.keras")
    loaded = keras.saving.load_model(tmp_path / "unet.keras")
    assert isinstance(loaded, UNetSegmenter)
    assert json.dumps(loaded.get_config(), sort_keys=True) == json.dumps(
        model.get_config(), sort_keys=True
    )
    np.testing.assert_array_equal(to_numpy(loaded(x)), to_numpy(model(x)))
    before, after = model.predict(x, verbose=0), loaded.predict(x, verbose=0)
    assert len(np.unique(before)) > 1  # random weights still give a varied class map
    np.testing.assert_array_equal(after, before)


def test_bad_arguments_name_what_was_received():
    encoder = unet_encoder((32, 32, 3), width=1 / 16, depth=3)
    for kwargs, message in [
        ({"upsampling": "nearest"}, "upsampling='nearest'"),
        ({"loss": "focal"}, "loss='focal'"),
        ({"dropout": 1.0}, "dropout=1.0"),
        ({"class_weights": [1.0, 2.0]}, r"3 finite weights .* got \[1.0, 2.0\]"),
        ({"ignore_index": 2}, "outside the labels 0..2, got 2"),
        ({"decoder_filters": [8, 8]}, r"3 integers >= 1, .* strides \[4, 2, 1\]; got \[8, 8\]"),
    ]:
        with pytest.raises(DetsegError, match=message):
            UNetSegmenter(encoder, 3, **kwargs)
    with pytest.raises(DetsegError, match="num_classes=0"):
        UNetSegmenter(encoder, 0)
    with pytest.raises(DetsegError, match=r"multiple of 8 .* got \(36, 36, 3\)"):
        UNetSegmenter(unet_encoder((36, 36, 3), width=1 / 16, depth=3), 3)
    with pytest.raises(DetsegError, match=r"level P1 is \(14, 14\) on a 32 px input, not 16"):
        UNetSegmenter(get_backbone("lenet5", (32, 32, 3), padding="valid"), 3)
    with pytest.raises(DetsegError, match="depth is an argument of the 'unet' encoder only"):
        build_unet(3, "resnet18", (32, 32, 3), depth=3)


# === Training ===

OVERFIT_SHAPES = ShapesConfig(
    num_train=6,
    num_val=1,
    image_size=64,
    min_objects=1,
    max_objects=3,
    min_size=14,
    max_size=32,
    seed=1,
)


def test_a_small_unet_overfits_six_shapes_images(tmp_path_factory):
    dataset = load_shapes(OVERFIT_SHAPES, "train", tmp_path_factory.mktemp("shapes"))
    lut = dataset.mask_lut()
    x = np.stack([read_image(s.image_path) for s in dataset.samples])
    y = np.stack([read_semantic_mask(s.semantic_mask_path, lut) for s in dataset.samples])
    num_classes = len(dataset.mask_classes)  # background, circle, square, triangle
    assert set(np.unique(y)) == set(range(num_classes))

    keras.utils.set_random_seed(0)
    model = build_unet(num_classes, "unet", (64, 64, 3), width=0.125, depth=3, loss="ce+dice")
    repeat = 8  # 8 steps of the same 6 images per epoch: fewer per-epoch overheads
    compile_built(model, keras.optimizers.Adam(1e-2), steps_per_execution=repeat)
    history = model.fit(
        np.concatenate([x] * repeat),
        np.concatenate([y] * repeat).astype(np.int32),
        batch_size=len(x),
        epochs=25,
        verbose=0,
        shuffle=False,
    ).history
    np.testing.assert_allclose(
        history["loss"], np.add(history["ce_loss"], history["dice_loss"]), rtol=1e-5
    )
    metrics = SegmentationMetrics(num_classes, class_names=dataset.mask_classes)
    metrics.update(y, model.predict(x, verbose=0))
    assert metrics.result()["mIoU"] > 0.9, metrics.result()
