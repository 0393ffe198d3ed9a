"""GoogLeNet's inception module (Szegedy et al. 2014, "Going deeper with convolutions")."""

import keras
from keras import ops

from detseg.layers._composite import build_chain, call_chain


@keras.saving.register_keras_serializable(package="detseg")
class InceptionModule(keras.layers.Layer):
    """Four parallel branches concatenated along channels, all at the input's resolution.

    1x1 | 1x1 -> 3x3 | 1x1 -> 5x5 | 3x3 max-pool (stride 1) -> 1x1, every conv with
    bias and ReLU as in the paper. Output channels:
    `filters_1x1 + filters_3x3 + filters_5x5 + filters_pool`.
    """

    def __init__(
        self,
        filters_1x1: int,
        filters_3x3_reduce: int,
        filters_3x3: int,
        filters_5x5_reduce: int,
        filters_5x5: int,
        filters_pool: int,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters_1x1 = filters_1x1
        self.filters_3x3_reduce = filters_3x3_reduce
        self.filters_3x3 = filters_3x3
        self.filters_5x5_reduce = filters_5x5_reduce
        self.filters_5x5 = filters_5x5
        self.filters_pool = filters_pool

        def conv(filters, size, name):
            return keras.layers.Conv2D(filters, size, padding="same", activation="relu", name=name)

        self.branch_1x1 = [conv(filters_1x1, 1, "1x1")]
        self.branch_3x3 = [conv(filters_3x3_reduce, 1, "3x3_reduce"), conv(filters_3x3, 3, "3x3")]
        self.branch_5x5 = [conv(filters_5x5_reduce, 1, "5x5_reduce"), conv(filters_5x5, 5, "5x5")]
        self.branch_pool = [
            keras.layers.MaxPooling2D(3, strides=1, padding="same", name="pool"),
            conv(filters_pool, 1, "pool_proj"),
        ]

    def _branches(self):
        return (self.branch_1x1, self.branch_3x3, self.branch_5x5, self.branch_pool)

    def build(self, input_shape):
        for branch in self._branches():
            build_chain(branch, input_shape)

    def call(self, inputs):
        return ops.concatenate([call_chain(b, inputs) for b in self._branches()], axis=-1)

    def compute_output_shape(self, input_shape):
        total = self.filters_1x1 + self.filters_3x3 + self.filters_5x5 + self.filters_pool
        return (*input_shape[:-1], total)

    def get_config(self):
        config = super().get_config()
        config.update(
            filters_1x1=self.filters_1x1,
            filters_3x3_reduce=self.filters_3x3_reduce,
            filters_3x3=self.filters_3x3,
            filters_5x5_reduce=self.filters_5x5_reduce,
            filters_5x5=self.filters_5x5,
            filters_pool=self.filters_pool,
        )
        return config
