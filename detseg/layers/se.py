"""Squeeze-and-excitation: reweight channels by a gate computed from their global means."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="detseg")
class SEBlock(keras.layers.Layer):
    """x * sigmoid(W2 relu(W1 mean_hw(x) + b1) + b2), one gate value per channel.

    The squeeze dense has `max(1, channels // ratio)` units (ratio 16 in the SENet paper).
    """

    def __init__(self, ratio: int = 16, **kwargs):
        super().__init__(**kwargs)
        if ratio < 1:
            raise ValueError(f"ratio must be >= 1, got {ratio}")
        self.ratio = int(ratio)

    def build(self, input_shape):
        channels = input_shape[-1]
        self.squeeze = keras.layers.Dense(
            max(1, channels // self.ratio), activation="relu", name="squeeze"
        )
        self.excite = keras.layers.Dense(channels, activation="sigmoid", name="excite")
        self.squeeze.build((None, channels))
        self.excite.build((None, self.squeeze.units))

    def gate(self, inputs):
        """The per-channel gate in (0, 1), shape [B, 1, 1, C]."""
        pooled = ops.mean(inputs, axis=(1, 2))
        return ops.expand_dims(ops.expand_dims(self.excite(self.squeeze(pooled)), 1), 1)

    def call(self, inputs):
        return inputs * self.gate(inputs)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(ratio=self.ratio)
        return config
