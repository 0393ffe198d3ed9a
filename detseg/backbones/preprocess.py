"""The input preprocessing each `keras.applications` family was trained with, as a layer.

detseg feeds every model RGB pixels 0..255 (see `detseg.backbones.pyramid`). An application's
ImageNet weights expect what its own `preprocess_input` makes of 0..255 RGB: "caffe" (ResNet, VGG: BGR order minus the
ImageNet mean pixel), "tf" (Xception, Inception, MobileNet v1/v2, ResNetV2, NASNet: -1..1) or
"torch" (DenseNet: the ImageNet mean and standard deviation per channel); EfficientNet,
ConvNeXt and MobileNetV3 rescale inside the model and take 0..255 as they are. The layer
does this inside the model, so training, evaluation, export and video all agree; it is also
the model's one pixel scaling (named `PIXELS_LAYER`), so the pixels are not scaled twice.
"""

from __future__ import annotations

import keras

from detseg.errors import DetsegError

# keras.applications module of the constructor -> its preprocess_input mode
FAMILY_MODES = {
    "resnet": "caffe",
    "vgg16": "caffe",
    "vgg19": "caffe",
    "xception": "tf",
    "inception_v3": "tf",
    "inception_resnet_v2": "tf",
    "mobilenet": "tf",
    "mobilenet_v2": "tf",
    "resnet_v2": "tf",
    "nasnet": "tf",
    "densenet": "torch",
    "efficientnet": "none",
    "efficientnet_v2": "none",
    "convnext": "none",
    "mobilenet_v3": "none",
}
_IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
_IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)  # 0..255, as the caffe-trained weights used


def family_mode(constructor) -> str:
    """The preprocessing mode of a `keras.applications` constructor, from its module."""
    family = constructor.__module__.rsplit(".", 1)[-1]
    if family not in FAMILY_MODES:
        raise DetsegError(f"no known input preprocessing for keras.applications.{family}")
    return FAMILY_MODES[family]


@keras.saving.register_keras_serializable(package="detseg")
class ImagenetPreprocess(keras.layers.Layer):
    """RGB pixels 0..255 -> the input an application family expects (`mode`, see module)."""

    def __init__(self, mode: str, **kwargs):
        super().__init__(**kwargs)
        if mode not in ("caffe", "tf", "torch", "none"):
            raise ValueError(f"unknown preprocessing mode {mode!r}")
        self.mode = mode

    def call(self, images):
        x = keras.ops.cast(images, self.compute_dtype)
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "torch":
            mean = keras.ops.array(_IMAGENET_MEAN_RGB, dtype=x.dtype)
            std = keras.ops.array(_IMAGENET_STD_RGB, dtype=x.dtype)
            return (x / 255.0 - mean) / std
        if self.mode == "caffe":
            mean_bgr = keras.ops.array(_CAFFE_MEAN_BGR, dtype=x.dtype)
            return keras.ops.flip(x, axis=-1) - mean_bgr
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "mode": self.mode}
