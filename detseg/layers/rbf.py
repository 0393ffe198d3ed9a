"""LeNet-5's Euclidean radial-basis-function output layer."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="detseg")
class RBFOutput(keras.layers.Layer):
    """y_i = sum_j (x_j - w_ij)^2: the squared distance of x to each class prototype w_i.

    A low value means a good match (the paper's penalty). With `logits=True` the layer
    returns -y_i so that softmax and cross-entropy pick the closest prototype. Weights:
    `[input_dim, units]`, no bias (84 * 10 = 840 parameters in LeNet-5).
    """

    def __init__(self, units: int, logits: bool = False, **kwargs):
        super().__init__(**kwargs)
        if units < 1:
            raise ValueError(f"units must be >= 1, got {units}")
        self.units = int(units)
        self.logits = bool(logits)

    def build(self, input_shape):
        self.prototypes = self.add_weight(
            name="prototypes", shape=(input_shape[-1], self.units), initializer="glorot_uniform"
        )

    def call(self, inputs):
        # ||x - w||^2 = ||x||^2 - 2 x.w + ||w||^2, one matmul instead of a [B, D, units] tensor.
        x_sq = ops.sum(ops.square(inputs), axis=-1, keepdims=True)
        w_sq = ops.sum(ops.square(self.prototypes), axis=0)
        distances = ops.maximum(x_sq - 2.0 * ops.matmul(inputs, self.prototypes) + w_sq, 0.0)
        return -distances if self.logits else distances

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def get_config(self):
        config = super().get_config()
        config.update(units=self.units, logits=self.logits)
        return config
