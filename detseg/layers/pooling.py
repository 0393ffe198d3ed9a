"""Pooling layers Keras lacks: depthwise max pooling and LeNet-5's trainable subsampling."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="detseg")
class DepthwiseMaxPool2D(keras.layers.Layer):
    """Max over consecutive groups of `pool_size` channels; spatial size unchanged.

    Output channel g is max(x[..., g*k : (g+1)*k]) with k = pool_size, so the channel
    count must be divisible by k. Such a layer can learn invariance to whatever the
    channels of a group respond to (e.g. the same pattern at several rotations).
    """

    def __init__(self, pool_size: int = 3, **kwargs):
        super().__init__(**kwargs)
        if pool_size < 1:
            raise ValueError(f"pool_size must be >= 1, got {pool_size}")
        self.pool_size = int(pool_size)

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None or channels % self.pool_size:
            raise ValueError(
                f"DepthwiseMaxPool2D needs channels divisible by pool_size={self.pool_size}, "
                f"got input shape {input_shape}"
            )

    def call(self, inputs):
        k = self.pool_size
        # Slice j holds channel g*k + j at position g; the elementwise max over the k
        # slices is the max over each group, with no reshape of unknown spatial dims.
        result = inputs[..., 0::k]
        for j in range(1, k):
            result = ops.maximum(result, inputs[..., j::k])
        return result

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], input_shape[-1] // self.pool_size)

    def get_config(self):
        config = super().get_config()
        config.update(pool_size=self.pool_size)
        return config


@keras.saving.register_keras_serializable(package="detseg")
class TrainableSubsampling2D(keras.layers.Layer):
    """LeNet-5's S-layers: activation(coefficient * avg_pool(x) + bias), per channel.

    Each map has one trainable coefficient and one trainable bias (2 parameters per
    channel); the paper summed the pooled inputs, which only rescales the coefficient.
    """

    def __init__(self, pool_size: int = 2, activation: "str | None" = "tanh", **kwargs):
        super().__init__(**kwargs)
        self.pool_size = int(pool_size)
        self.activation = keras.activations.get(activation)
        self._activation_name = activation
        self.pool = keras.layers.AveragePooling2D(pool_size, padding="same", name="pool")

    def build(self, input_shape):
        channels = input_shape[-1]
        self.coefficient = self.add_weight(
            name="coefficient", shape=(channels,), initializer="ones"
        )
        self.bias = self.add_weight(name="bias", shape=(channels,), initializer="zeros")
        self.pool.build(input_shape)

    def call(self, inputs):
        return self.activation(self.pool(inputs) * self.coefficient + self.bias)

    def compute_output_shape(self, input_shape):
        return self.pool.compute_output_shape(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(pool_size=self.pool_size, activation=self._activation_name)
        return config
