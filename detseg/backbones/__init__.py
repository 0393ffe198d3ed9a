"""Backbones: the classic CNNs as feature-pyramid extractors.

`BACKBONES` is the only name -> builder table. Each builder is
`builder(input_shape=(None, None, 3), *, width=1.0, weights=None, name=...) -> keras.Model`
and returns a model whose outputs are `{"P3": ..., "P4": ..., "P5": ...}` (LeNet-5: P1, P2)
with `model.feature_info = {level: (stride, channels)}`; `feature_info(model)` recomputes
that table after a `.keras` load. `get_backbone` also resolves "applications:<Name>" and,
with the optional `[kerascv]` extra on the TensorFlow backend, "kerascv:<name>" (a keras-cv
architecture such as yolo_v8_xs, `kerascv.ARCHITECTURES`; keras_cv is imported only there).
Every backbone takes RGB (or grey) pixels 0..255, uint8 or float, and scales them in its
first layer (`pyramid.image_input`): the one place where a detseg model scales its input.
"""

import difflib
import inspect

import keras

from detseg.backbones.alexnet import alexnet
from detseg.backbones.applications import PREFIX as APPLICATIONS_PREFIX
from detseg.backbones.applications import application_backbone, application_names
from detseg.backbones.darknet import darknet53, darknet_tiny
from detseg.backbones.fashion_cnn import fashion_cnn
from detseg.backbones.googlenet import googlenet
from detseg.backbones.kerascv import PREFIX as KERASCV_PREFIX
from detseg.backbones.kerascv import kerascv_backbone
from detseg.backbones.lenet5 import lenet5
from detseg.backbones.pyramid import feature_info
from detseg.backbones.resnet import resnet18, resnet34, resnet50
from detseg.backbones.senet import se_resnet, se_resnet50
from detseg.backbones.vgg import vgg16, vgg19
from detseg.backbones.xception import xception
from detseg.errors import DetsegError

BACKBONES = {
    "lenet5": lenet5,
    "alexnet": alexnet,
    "googlenet": googlenet,
    "vgg16": vgg16,
    "vgg19": vgg19,
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "xception": xception,
    "se_resnet": se_resnet,
    "se_resnet50": se_resnet50,
    "darknet53": darknet53,
    "darknet_tiny": darknet_tiny,
    "fashion_cnn": fashion_cnn,
}


def get_backbone(name: str, input_shape=(None, None, 3), /, **kwargs) -> keras.Model:
    """Build backbone `name` (a `BACKBONES` key, "applications:<Name>" or "kerascv:<name>")
    on `input_shape`.

    `kwargs` go to the builder (`width`, `weights`, `name` of the model, ...);
    applications take `weights` and `name` only, keras-cv ones also `width` (1.0 only).
    """
    for prefix, builder in (
        (APPLICATIONS_PREFIX, application_backbone),
        (KERASCV_PREFIX, kerascv_backbone),
    ):
        if name.startswith(prefix):
            _check_arguments(name, builder, kwargs)
            return builder(name[len(prefix) :], input_shape, **kwargs)
    if name not in BACKBONES:
        close = difflib.get_close_matches(name, list(BACKBONES), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(n) for n in close)}?" if close else ""
        raise DetsegError(
            f"unknown backbone {name!r}{hint} (valid: {', '.join(BACKBONES)}, "
            f"or {APPLICATIONS_PREFIX}<Name> for a keras.applications model, "
            f"or {KERASCV_PREFIX}<name> for a keras-cv one)"
        )
    _check_arguments(name, BACKBONES[name], kwargs)
    return BACKBONES[name](input_shape, **kwargs)


def _check_arguments(name: str, builder, kwargs: dict) -> None:
    """Reject keyword arguments the builder does not take, naming the ones it does."""
    parameters = inspect.signature(builder).parameters
    accepted = [p for p, spec in parameters.items() if spec.kind is spec.KEYWORD_ONLY]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise DetsegError(
            f"backbone {name!r} takes no argument {', '.join(unknown)} "
            f"(valid: {', '.join(accepted)})"
        )


__all__ = [
    "APPLICATIONS_PREFIX",
    "BACKBONES",
    "KERASCV_PREFIX",
    "application_backbone",
    "application_names",
    "feature_info",
    "get_backbone",
    "kerascv_backbone",
]
