"""RGB -> one grey channel inside a model, for networks designed on grayscale images."""

import keras


@keras.saving.register_keras_serializable(package="detseg")
class RGBToGrayscale(keras.layers.Layer):
    """`[B, H, W, 3]` RGB -> `[B, H, W, 1]` luma (ITU-R 601 weights, `keras.ops.image`).

    detseg reads every image as RGB; a grayscale file arrives as three equal channels, which
    this turns back into the one channel the network (e.g. the Fashion-MNIST CNN) expects.
    """

    def call(self, images):
        return keras.ops.image.rgb_to_grayscale(images)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 1)
