"""What every backbone shares: the pixel input, the pyramid-output contract and `weights`.

**Input contract.** Every model detseg builds takes RGB (or grey) pixels 0..255, as uint8 or
float, and scales them inside the model: each backbone starts with `image_input`, a float32
`keras.Input` followed by `Rescaling(1/255)` named `PIXELS_LAYER` (an `applications:` backbone
folds that scale into its `ImagenetPreprocess`, also named `PIXELS_LAYER`). The heads and the
classifier take images through their backbone, so this is the one place models scale pixels,
and loaders, predictors, exports and video all send the uint8 pixels as they are.

The Input stays float32 on purpose: a Keras 3 functional model casts its input to the Input
dtype inside the call, so a uint8 batch is cast in the compiled step; the host -> device copy
is uint8 (1 byte a pixel, 4x fewer than float32: a uint8 tf.data tensor under TensorFlow, a
uint8 `jax.device_put` under JAX), while float 0..255 input (resized, interpolated pixels)
keeps its fractions. A uint8 Input would instead truncate such floats.

A backbone is a `keras.Model` whose outputs are a dict `{"P3": ..., "P4": ..., "P5": ...}`,
level `Pk` having stride `2**k`, and which carries `feature_info = {level: (stride,
channels)}`. Custom attributes do not survive a `.keras` round trip, so `feature_info(model)`
recomputes the table from the output names and shapes.
"""

import os
import re

import keras

from detseg.errors import DetsegError
from detseg.layers.conv import scale_channels

_LEVEL = re.compile(r"^P(\d+)$")

PIXELS_LAYER = "pixels"
"""Name of the layer that scales 0..255 pixels inside every model detseg builds."""


def image_input(input_shape, name: str = "image") -> tuple:
    """`(inputs, pixels)`: a float32 Input taking 0..255 pixels (uint8 batches are cast in the
    model's step) and those pixels scaled to 0..1 by the `PIXELS_LAYER` layer."""
    inputs = keras.Input(tuple(input_shape), name=name)
    return inputs, keras.layers.Rescaling(1.0 / 255.0, name=PIXELS_LAYER)(inputs)


def scales_pixels(model: keras.Model) -> bool:
    """Whether `model` (or a model nested in it) has the `PIXELS_LAYER` that scales 0..255
    input: False for a model saved before that contract, which expected 0..1 input."""
    return any(
        layer.name == PIXELS_LAYER or (isinstance(layer, keras.Model) and scales_pixels(layer))
        for layer in model.layers
    )


def feature_info(model: keras.Model) -> dict[str, tuple[int, int]]:
    """`{level: (stride, channels)}` for each `Pk` output of a backbone, in level order."""
    outputs = model.output
    if not isinstance(outputs, dict):
        raise DetsegError(
            f"model {model.name!r} is not a backbone: its outputs are not a dict of levels"
        )
    info = {}
    for key, tensor in outputs.items():
        match = _LEVEL.match(key)
        if match:
            info[key] = (2 ** int(match.group(1)), int(tensor.shape[-1]))
    return dict(sorted(info.items(), key=lambda item: item[1][0]))


def make_backbone(inputs, levels: dict, *, name: str, weights: "str | None") -> keras.Model:
    """The backbone Model over `levels` (a dict of `Pk` tensors), with `feature_info` set
    and `weights` (None or a local `.weights.h5` path) loaded."""
    model = keras.Model(inputs, levels, name=name)
    model.feature_info = feature_info(model)
    load_weights(model, weights)
    return model


def load_weights(model: keras.Model, weights: "str | None") -> None:
    """Load a local weights file into `model`; None keeps the random initialisation.

    Only `keras.applications` backbones have downloadable ImageNet weights
    (`applications:<Name>`); detseg's own builds accept a file saved with `save_weights`.
    """
    if weights is None:
        return
    if weights == "imagenet":
        raise DetsegError(
            f"backbone {model.name!r} has no downloadable 'imagenet' weights: use an "
            "'applications:<Name>' backbone (e.g. applications:ResNet50) or pass a local "
            "'.weights.h5' file saved with model.save_weights()"
        )
    weights = os.fspath(weights)
    if not os.path.isfile(weights):
        raise DetsegError("weights file not found", weights)
    try:
        model.load_weights(weights)
    except (ValueError, OSError, KeyError) as error:
        raise DetsegError(
            f"cannot load these weights into {model.name!r}: {error}", weights
        ) from error


def channel_scaler(width: float, name: str):
    """A function mapping a paper channel count to the count under width multiplier `width`."""
    if not width > 0:
        raise DetsegError(f"backbone {name!r}: width must be > 0, got {width!r}")
    return lambda channels: scale_channels(channels, width)
