"""The chapter's layers against hand-computed values, NumPy references and save/load."""

import keras
import numpy as np
import pytest

from detseg.layers import (
    BottleneckUnit,
    DepthwiseMaxPool2D,
    InceptionModule,
    LocalResponseNormalization,
    RBFOutput,
    ResidualUnit,
    SEBlock,
    SeparableConvBlock,
    TrainableSubsampling2D,
)

RNG = np.random.default_rng(0)


def _numpy(x):
    return keras.ops.convert_to_numpy(x)


@pytest.mark.jax
def test_lrn_matches_hand_computed_values():
    # One pixel with channels [1, 2, 3, 4, 5]; depth_radius 2, bias 1, alpha 0.1, beta 0.5.
    x = np.array([1, 2, 3, 4, 5], dtype="float32").reshape(1, 1, 1, 5)
    y = _numpy(LocalResponseNormalization(depth_radius=2, bias=1.0, alpha=0.1, beta=0.5)(x))
    # channel 0: window 0..2 -> 1 + 4 + 9 = 14           -> 1 / sqrt(1 + 1.4)
    # channel 2: window 0..4 -> 1 + 4 + 9 + 16 + 25 = 55 -> 3 / sqrt(1 + 5.5)
    # channel 4: window 2..4 -> 9 + 16 + 25 = 50         -> 5 / sqrt(1 + 5.0)
    expected = [
        1 / np.sqrt(2.4),
        2 / np.sqrt(1 + 0.1 * 30),
        3 / np.sqrt(6.5),
        4 / np.sqrt(1 + 0.1 * 54),
        5 / np.sqrt(6.0),
    ]
    np.testing.assert_allclose(y.ravel(), expected, rtol=1e-6)


def test_lrn_matches_tensorflow_with_paper_constants():
    import tensorflow as tf

    x = RNG.normal(size=(2, 5, 6, 11)).astype("float32") * 30
    ours = _numpy(LocalResponseNormalization()(x))  # k=2, n=5 (radius 2), alpha=1e-4, beta=0.75
    reference = tf.nn.local_response_normalization(
        x, depth_radius=2, bias=2.0, alpha=1e-4, beta=0.75
    )
    np.testing.assert_allclose(ours, reference.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.jax
def test_depthwise_max_pool_matches_numpy_group_max():
    x = RNG.normal(size=(2, 4, 5, 12)).astype("float32")
    y = _numpy(DepthwiseMaxPool2D(pool_size=3)(x))
    expected = x.reshape(2, 4, 5, 4, 3).max(axis=-1)  # groups of 3 consecutive channels
    np.testing.assert_array_equal(y, expected)


def test_depthwise_max_pool_rejects_channels_not_divisible():
    with pytest.raises(ValueError, match="divisible"):
        DepthwiseMaxPool2D(pool_size=3)(keras.Input((4, 4, 10)))


@pytest.mark.jax
def test_trainable_subsampling_is_tanh_of_scaled_average_plus_bias():
    x = RNG.normal(size=(1, 4, 6, 2)).astype("float32")
    layer = TrainableSubsampling2D(2, activation="tanh")
    layer.build(x.shape)
    layer.set_weights([np.array([0.5, -2.0], "float32"), np.array([0.1, 0.3], "float32")])
    average = x.reshape(1, 2, 2, 3, 2, 2).mean(axis=(2, 4))  # 2x2 blocks
    expected = np.tanh(average * [0.5, -2.0] + [0.1, 0.3])
    np.testing.assert_allclose(_numpy(layer(x)), expected, rtol=1e-5, atol=1e-6)
    assert layer.count_params() == 2 * 2  # one coefficient and one bias per map


@pytest.mark.jax
def test_rbf_output_is_squared_distance_to_each_prototype():
    x = RNG.normal(size=(3, 84)).astype("float32")
    layer = RBFOutput(10)
    distances = _numpy(layer(x))
    prototypes = layer.get_weights()[0]  # [84, 10]
    expected = np.array([[np.sum((row - prototypes[:, i]) ** 2) for i in range(10)] for row in x])
    np.testing.assert_allclose(distances, expected, rtol=1e-4)
    as_logits = RBFOutput(10, logits=True)
    as_logits.build(x.shape)
    as_logits.set_weights([prototypes])
    np.testing.assert_allclose(_numpy(as_logits(x)), -expected, rtol=1e-4)  # closest = highest
    assert layer.count_params() == 84 * 10


@pytest.mark.jax
def test_se_block_output_equals_input_times_sigmoid_gate():
    x = RNG.normal(size=(2, 3, 4, 32)).astype("float32")
    block = SEBlock(ratio=16)
    y = _numpy(block(x))
    w1, b1, w2, b2 = block.get_weights()  # squeeze [32, 2], excite [2, 32]
    assert w1.shape == (32, 2) and w2.shape == (2, 32)
    squeezed = x.mean(axis=(1, 2))
    gate = 1 / (1 + np.exp(-(np.maximum(squeezed @ w1 + b1, 0) @ w2 + b2)))
    np.testing.assert_allclose(y, x * gate[:, None, None, :], rtol=1e-5, atol=1e-6)


def _count(layer, input_shape):
    layer.build(input_shape)
    return layer.count_params()


def test_residual_unit_parameters_by_hand():
    # Same shape: two 3x3 convs 64->64 without bias, two BNs (4 numbers per channel).
    assert _count(ResidualUnit(64), (None, 8, 8, 64)) == 2 * 9 * 64 * 64 + 2 * 4 * 64  # 74,240
    # Stride 2 and 64->128: convs 9*64*128 + 9*128*128, BNs 2*4*128, skip 1x1 64*128 + BN 4*128.
    unit = ResidualUnit(128, strides=2)
    assert _count(unit, (None, 8, 8, 64)) == 73_728 + 147_456 + 1_024 + 8_192 + 512
    assert unit.compute_output_shape((None, 8, 8, 64)) == (None, 4, 4, 128)


def test_bottleneck_unit_parameters_by_hand():
    # 256 -> 64 (1x1) -> 64 (3x3) -> 256 (1x1): 16,384 + 36,864 + 16,384; BNs 4*(64+64+256).
    assert _count(BottleneckUnit(64), (None, 8, 8, 256)) == 69_632 + 1_536
    # From 64 channels the skip needs a 1x1 64->256 conv + BN: + 16,384 + 1,024.
    assert _count(BottleneckUnit(64), (None, 8, 8, 64)) == 4_096 + 36_864 + 16_384 + 1_536 + 17_408


def test_se_residual_unit_adds_the_gate_parameters():
    plain = _count(ResidualUnit(64), (None, 8, 8, 64))
    # SE on 64 channels, ratio 16: dense 64->4 (+4 bias) and 4->64 (+64 bias) = 260 + 320.
    assert _count(ResidualUnit(64, se_ratio=16), (None, 8, 8, 64)) == plain + 580


def test_inception_module_3a_parameters_and_channels():
    module = InceptionModule(64, 96, 128, 16, 32, 32)
    # On GoogLeNet's 192-channel input, convs with bias:
    # 1x1 192*64+64 = 12,352; 3x3 reduce 192*96+96 = 18,528; 3x3 9*96*128+128 = 110,720;
    # 5x5 reduce 192*16+16 = 3,088; 5x5 25*16*32+32 = 12,832; pool proj 192*32+32 = 6,176.
    assert _count(module, (None, 28, 28, 192)) == 163_696
    assert module.compute_output_shape((None, 28, 28, 192)) == (None, 28, 28, 64 + 128 + 32 + 32)


def test_separable_conv_block_parameters_and_activation_order():
    # Depthwise 3x3 on 16 channels (144) + pointwise 16*32 (512), no bias; BN 4*32.
    assert _count(SeparableConvBlock(32), (None, 6, 6, 16)) == 144 + 512 + 128
    x = RNG.normal(size=(1, 6, 6, 16)).astype("float32")
    assert _numpy(SeparableConvBlock(8, activate_first=False)(x)).min() >= 0  # ends in ReLU
    assert _numpy(SeparableConvBlock(8, activate_first=True)(x)).min() < 0  # ends in BN


LAYER_CASES = {
    "lrn": (lambda: LocalResponseNormalization(3, 1.5, 1e-3, 0.5), (6, 6, 8)),
    "depthwise_max_pool": (lambda: DepthwiseMaxPool2D(2), (6, 6, 8)),
    "subsampling": (lambda: TrainableSubsampling2D(2, activation="sigmoid"), (6, 6, 8)),
    "rbf": (lambda: RBFOutput(5, logits=True), (12,)),
    "inception": (lambda: InceptionModule(4, 2, 4, 2, 4, 4), (6, 6, 8)),
    "residual": (lambda: ResidualUnit(16, strides=2, se_ratio=4), (6, 6, 8)),
    "bottleneck": (lambda: BottleneckUnit(4, strides=2), (6, 6, 8)),
    "se": (lambda: SEBlock(4), (6, 6, 8)),
    "separable": (lambda: SeparableConvBlock(8, 5, activate_first=False), (6, 6, 8)),
}


@pytest.mark.jax
@pytest.mark.parametrize("case", list(LAYER_CASES))
def test_layer_config_and_keras_file_round_trip(case, tmp_path):
    make_layer, shape = LAYER_CASES[case]
    layer = make_layer()
    clone = type(layer).from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()

    inputs = keras.Input(shape)
    model = keras.Model(inputs, layer(inputs))
    # One training step so batch-norm statistics and weights move away from their init.
    x = RNG.normal(size=(4, *shape)).astype("float32")
    if model.trainable_weights:
        model.compile("sgd", "mse")
        model.fit(x, _numpy(model(x)) + 1.0, epochs=1, verbose=0)
    path = tmp_path / f"{case}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded.layers[-1]) is type(layer)
    np.testing.assert_allclose(_numpy(loaded(x)), _numpy(model(x)), rtol=1e-6, atol=1e-6)
