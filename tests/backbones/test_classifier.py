"""Classifiers: published parameter counts, the paper tops, transfer learning, learning."""

import keras
import numpy as np
import pytest

from detseg.backbones import feature_info
from detseg.errors import DetsegError
from detseg.heads.classifier import build_classifier, set_backbone_trainable


def _trainable(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def test_resnet34_ten_classes_matches_torchvision_count():
    model = build_classifier("resnet34", (224, 224, 3), 10)
    # torchvision resnet34 has 21,797,672 parameters with its 1000-way fc (512*1000 + 1000):
    # trunk 21,284,672 + 10-way head 5,130 = 21,289,802 trainable; the BN moving means and
    # variances (8,512 channels x 2) add 17,024 non-trainable.
    assert _trainable(model) == 21_289_802
    assert model.count_params() == 21_306_826


def test_vgg16_paper_top_matches_published_and_keras_applications_counts():
    ours = build_classifier("vgg16", (224, 224, 3), 1000, top="paper").count_params()
    assert ours == 138_357_544
    assert keras.applications.VGG16(weights=None).count_params() == ours


def test_xception_thousand_classes_matches_published_count():
    assert build_classifier("xception", (224, 224, 3), 1000).count_params() == 22_910_480


def test_resnet50_trainable_count_matches_torchvision():
    assert _trainable(build_classifier("resnet50", (224, 224, 3), 1000)) == 25_557_032


def test_lenet5_paper_count_by_hand():
    model = build_classifier("lenet5", (32, 32, 1), 10, top="paper")
    hand = (
        (5 * 5 * 1 + 1) * 6  # C1: 156
        + 2 * 6  # S2: coefficient + bias per map, 12
        + (5 * 5 * 6 + 1) * 16  # C3, fully connected to S2: 2,416 (the paper's table: 1,516)
        + 2 * 16  # S4: 32
        + (5 * 5 * 16 + 1) * 120  # C5: 48,120
        + (120 + 1) * 84  # F6: 10,164
        + 84 * 10  # RBF output, no bias: 840
    )
    assert hand == 61_740
    assert model.count_params() == hand
    assert model.output.shape == (None, 10)


def test_alexnet_paper_count_by_hand():
    model = build_classifier("alexnet", (227, 227, 3), 1000, top="paper", dropout=0.5)
    hand = (
        (11 * 11 * 3 + 1) * 96  # conv1: 34,944
        + (5 * 5 * 96 + 1) * 256  # conv2: 614,656
        + (3 * 3 * 256 + 1) * 384  # conv3: 885,120
        + (3 * 3 * 384 + 1) * 384  # conv4: 1,327,488
        + (3 * 3 * 384 + 1) * 256  # conv5: 884,992
        + (6 * 6 * 256 + 1) * 4096  # fc6 on the 6x6x256 pool3: 37,752,832
        + (4096 + 1) * 4096  # fc7: 16,781,312
        + (4096 + 1) * 1000  # fc8: 4,097,000
    )
    assert hand == 62_378_344
    assert model.count_params() == hand


def _inception(cin, n1, r3, n3, r5, n5, pool):
    """Parameters of one inception module from a row of the paper's Table 1 (with biases)."""
    return (
        cin * n1 + n1 + cin * r3 + r3 + 9 * r3 * n3 + n3
        + cin * r5 + r5 + 25 * r5 * n5 + n5 + cin * pool + pool
    )  # fmt: skip


def test_googlenet_count_by_hand_from_the_paper_table():
    model = build_classifier("googlenet", (224, 224, 3), 1000, dropout=0.4)
    stem = (7 * 7 * 3 + 1) * 64 + (64 + 1) * 64 + (3 * 3 * 64 + 1) * 192  # 9,472 + 4,160 + 110,784
    modules = (
        _inception(192, 64, 96, 128, 16, 32, 32)  # 3a -> 256 channels: 163,696
        + _inception(256, 128, 128, 192, 32, 96, 64)  # 3b -> 480: 388,736
        + _inception(480, 192, 96, 208, 16, 48, 64)  # 4a -> 512: 376,176
        + _inception(512, 160, 112, 224, 24, 64, 64)  # 4b -> 512: 449,160
        + _inception(512, 128, 128, 256, 24, 64, 64)  # 4c -> 512: 510,104
        + _inception(512, 112, 144, 288, 32, 64, 64)  # 4d -> 528: 605,376
        + _inception(528, 256, 160, 320, 32, 128, 128)  # 4e -> 832: 868,352
        + _inception(832, 256, 160, 320, 32, 128, 128)  # 5a -> 832: 1,043,456
        + _inception(832, 384, 192, 384, 48, 128, 128)  # 5b -> 1024: 1,444,080
    )
    head = (1024 + 1) * 1000  # linear after 7x7 average pooling: 1,025,000
    assert stem + modules + head == 6_998_552
    assert model.count_params() == 6_998_552

    with_aux = build_classifier("googlenet", (224, 224, 3), 1000, aux_classifiers=True)
    # Each auxiliary head on a 14x14 map: 5x5/3 avg pool -> 4x4, 1x1 conv 128, fc 1024, fc 1000.
    aux_4a = (512 + 1) * 128 + (4 * 4 * 128 + 1) * 1024 + (1024 + 1) * 1000  # 3,188,840
    aux_4d = (528 + 1) * 128 + (4 * 4 * 128 + 1) * 1024 + (1024 + 1) * 1000  # 3,190,888
    assert with_aux.count_params() == 6_998_552 + aux_4a + aux_4d
    assert set(with_aux.output) == {"predictions", "aux_4a", "aux_4d"}


def test_bad_classifier_arguments_are_user_errors():
    with pytest.raises(DetsegError, match="top='paper' exists for lenet5, alexnet, vgg16, vgg19"):
        build_classifier("resnet18", (64, 64, 3), 10, top="paper")
    with pytest.raises(DetsegError, match="needs a fixed input size"):
        build_classifier("vgg16", (None, None, 3), 10, top="paper")
    with pytest.raises(DetsegError, match="unknown classifier top 'dense'"):
        build_classifier("vgg16", (64, 64, 3), 10, top="dense")
    with pytest.raises(DetsegError, match="num_classes must be an integer >= 2"):
        build_classifier("lenet5", (32, 32, 1), 1)
    with pytest.raises(DetsegError, match=r"dropout must be in \[0, 1\)"):
        build_classifier("lenet5", (32, 32, 1), 10, dropout=1.0)
    with pytest.raises(DetsegError, match="aux_classifiers exist only for 'googlenet'"):
        build_classifier("resnet18", (64, 64, 3), 10, aux_classifiers=True)
    with pytest.raises(DetsegError, match="has no layer named 'backbone'"):
        set_backbone_trainable(keras.Sequential([keras.layers.Dense(2)], name="plain"), False)


def _values(variables):
    return [keras.ops.convert_to_numpy(v).copy() for v in variables]


def _changed(before, variables):
    return [not np.array_equal(b, a) for b, a in zip(before, _values(variables), strict=True)]


@pytest.mark.jax
def test_frozen_backbone_stays_fixed_then_fine_tuning_moves_everything():
    keras.utils.set_random_seed(0)
    model = build_classifier("darknet_tiny", (32, 32, 3), 3, width=0.25)
    backbone = model.get_layer("backbone")
    head = model.get_layer("predictions")
    x = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    y = np.arange(16) % 3

    # Phase 1: frozen backbone, weights and batch-norm statistics untouched.
    set_backbone_trainable(model, False)
    model.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy")
    backbone_before, head_before = _values(backbone.weights), _values(head.weights)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert not any(_changed(backbone_before, backbone.weights))
    assert all(_changed(head_before, head.weights))

    # Phase 2: unfreeze, recompile, continue: every backbone variable and the head move.
    set_backbone_trainable(model, True)
    model.compile(keras.optimizers.SGD(0.01), "sparse_categorical_crossentropy")
    backbone_before, head_before = _values(backbone.weights), _values(head.weights)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert all(_changed(backbone_before, backbone.weights))  # incl. BN moving statistics
    assert all(_changed(head_before, head.weights))


def _bars(count, rng):
    """32x32 grey images (pixel values, as models take them) with one vertical (class 0) or
    horizontal (class 1) bar + noise."""
    images = rng.normal(0.0, 0.1, (count, 32, 32, 1)).astype("float32")
    labels = rng.integers(0, 2, count)
    for image, label, pos in zip(images, labels, rng.integers(4, 26, count), strict=True):
        if label == 0:
            image[:, pos : pos + 3] += 1.0
        else:
            image[pos : pos + 3, :] += 1.0
    return images * 255, labels


def test_lenet5_classifier_learns_bar_orientation():
    keras.utils.set_random_seed(1)
    rng = np.random.default_rng(1)
    (x_train, y_train), (x_test, y_test) = _bars(256, rng), _bars(128, rng)
    model = build_classifier("lenet5", (32, 32, 1), 2, top="paper")
    model.compile(
        keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    model.fit(x_train, y_train, batch_size=32, epochs=6, verbose=0)
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    assert accuracy > 0.9  # chance is 0.5


@pytest.mark.jax
def test_classifier_keras_round_trip_keeps_the_backbone(tmp_path, forward):
    model = build_classifier("lenet5", (32, 32, 1), 10, top="paper", dropout=0.2)
    path = tmp_path / "lenet5.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    x = np.random.default_rng(3).normal(size=(2, 32, 32, 1)).astype("float32")
    np.testing.assert_allclose(forward(loaded, x), forward(model, x), atol=1e-6)
    assert feature_info(loaded.get_layer("backbone")) == {"P1": (2, 6), "P2": (4, 16)}
    set_backbone_trainable(loaded, False)
    assert not loaded.get_layer("backbone").trainable_weights


def test_googlenet_auxiliary_loss_weight_comes_from_the_config_and_survives_saving(tmp_path):
    from detseg.config import load_config
    from detseg.tasks import TASKS

    cfg = load_config(None, {"model.kind": "classifier", "model.backbone": "googlenet", "model.backbone_width": 0.25, "model.input_size": 96, "model.aux_loss_weight": 0.5})
    model = TASKS["classifier"].build_model(cfg, 3)
    assert set(model.output) == {"predictions", "aux_4a", "aux_4d"}
    rng = np.random.default_rng(0)
    probs = {k: rng.dirichlet(np.ones(3), 4).astype("float32") for k in model.output}
    labels = np.array([0, 2, 1, 2])

    def cross_entropy(p):
        return float(np.mean(-np.log(p[np.arange(4), labels])))

    expected = cross_entropy(probs["predictions"]) + 0.5 * (cross_entropy(probs["aux_4a"]) + cross_entropy(probs["aux_4d"]))
    loss = model.compute_loss(y=labels, y_pred=probs)
    assert float(keras.ops.convert_to_numpy(loss)) == pytest.approx(expected, rel=1e-5)
    model.save(tmp_path / "g.keras")
    assert keras.saving.load_model(tmp_path / "g.keras").aux_loss_weight == 0.5
    plain = TASKS["classifier"].build_model(load_config(None, {"model.kind": "classifier", "model.backbone": "googlenet", "model.backbone_width": 0.25, "model.input_size": 96}), 3)
    assert not isinstance(plain.output, dict)  # null: no auxiliary classifiers


def test_fashion_cnn_has_the_chapters_parameter_count():
    """The chapter's model on 28x28x1 inputs and 10 classes, layer by layer."""
    from detseg.config import load_config
    from detseg.tasks import TASKS

    model = TASKS["classifier"].build_model(load_config("configs/fashion_cnn.yaml"), 10)
    convs = (7 * 7 * 1 + 1) * 64 + (3 * 3 * 64 + 1) * 128 + (3 * 3 * 128 + 1) * 128
    convs += (3 * 3 * 128 + 1) * 256 + (3 * 3 * 256 + 1) * 256
    flat = 3 * 3 * 256  # 28 -> 14 -> 7 -> 3 after the three 2x2 poolings
    dense = (flat + 1) * 128 + (128 + 1) * 64 + (64 + 1) * 10
    assert convs + dense == 1_413_834
    assert model.count_params() == 1_413_834
    assert model.input_shape == (None, 28, 28, 3)  # RGB in, one grey channel inside
    assert model.get_layer("backbone").input_shape == (None, 28, 28, 1)
