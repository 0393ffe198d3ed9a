"""What every backbone shares: the pyramid-output contract and the `weights` argument.

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
