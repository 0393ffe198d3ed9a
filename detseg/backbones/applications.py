"""`applications:<Name>`: any `keras.applications` model as a pyramid backbone.

The model is built with `include_top=False`; P3/P4/P5 are the last layers at strides
8/16/32. Like every detseg backbone it takes RGB pixels 0..255: an `ImagenetPreprocess`
layer in front (the model's `PIXELS_LAYER`) turns them into what the family's
`preprocess_input` would give (caffe, tf or torch style, or the pixels as they are for the
models that rescale inside).
"""

import difflib
import functools
import math
import os

import keras

from detseg.backbones.preprocess import ImagenetPreprocess, family_mode
from detseg.backbones.pyramid import PIXELS_LAYER, make_backbone
from detseg.errors import DetsegError

PREFIX = "applications:"

# Side of the probe model (random weights) used to find each stride's layer.
_PROBE_SIZE = 512


def application_names() -> list[str]:
    """The model constructors `keras.applications` offers (e.g. "ResNet50", "MobileNetV2")."""
    return sorted(n for n in dir(keras.applications) if n[:1].isupper())


def application_backbone(
    app_name: str,
    input_shape=(None, None, 3),
    *,
    weights: "str | None" = None,
    name: "str | None" = None,
) -> keras.Model:
    """Wrap `keras.applications.<app_name>` as a backbone with levels P3, P4, P5.

    `weights`: None (random), "imagenet" (downloaded by Keras into ~/.keras; offline this
    fails with a DetsegError suggesting a local file) or a local weights file path.
    """
    constructor = _constructor(app_name)
    if weights not in (None, "imagenet"):
        weights = os.fspath(weights)
        if not os.path.isfile(weights):
            raise DetsegError("weights file not found", weights)
    images = keras.Input(tuple(input_shape), name="images")
    preprocessed = ImagenetPreprocess(family_mode(constructor), name=PIXELS_LAYER)(images)
    app = _build(constructor, app_name, input_shape, weights, input_tensor=preprocessed)
    layers = _own_layers(app)
    levels = {level: layers[index].output for level, index in _probe_level_positions(app_name, input_shape[2])}
    return make_backbone(images, levels, name=name or f"applications_{app_name}", weights=None)


def _constructor(app_name: str):
    names = application_names()
    if app_name not in names:
        close = difflib.get_close_matches(app_name, names, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(PREFIX + n for n in close)}?" if close else ""
        raise DetsegError(
            f"unknown keras application {app_name!r}{hint} (valid: {', '.join(names)})"
        )
    return getattr(keras.applications, app_name)


def _build(constructor, app_name: str, input_shape, weights, input_tensor=None) -> keras.Model:
    try:
        return constructor(
            include_top=False, weights=weights, input_shape=tuple(input_shape), input_tensor=input_tensor
        )
    except ValueError as error:
        raise DetsegError(f"{PREFIX}{app_name}: {error}") from error
    except Exception as error:
        if weights == "imagenet" and _is_download_failure(error):
            raise DetsegError(
                f"{PREFIX}{app_name}: could not download the ImageNet weights ({error}). "
                "Offline? Download the file on a connected machine and pass its local path "
                "as weights=<file.h5>, or copy it into ~/.keras/models/."
            ) from error
        raise


def _own_layers(app: keras.Model) -> list:
    """The application's own layers in graph order, without the input and our preprocessing."""
    return [layer for layer in app.layers if not isinstance(layer, (keras.layers.InputLayer, ImagenetPreprocess))]


@functools.cache
def _probe_level_positions(app_name: str, channels: int) -> tuple:
    """((level, position in `_own_layers`), ...) found once per application on a large
    random-weight probe, where "valid" paddings barely move the map sizes off side / stride;
    the same positions then serve any input size. Positions, not names: unnamed layers (e.g.
    Xception's residual adds) get a new automatic name in every model built."""
    probe = _build(_constructor(app_name), app_name, (_PROBE_SIZE, _PROBE_SIZE, channels), None)
    position = {layer.name: i for i, layer in enumerate(_own_layers(probe))}
    return tuple((level, position[name]) for level, name in _level_layer_names(probe).items())


def _is_download_failure(error: Exception) -> bool:
    # keras.utils.get_file turns URLError/HTTPError into Exception("URL fetch failure ...");
    # timeouts and socket errors surface as OSError.
    return isinstance(error, OSError) or "URL fetch failure" in str(error)


def _level_layer_names(model: keras.Model) -> dict[str, str]:
    """{"P3": name, ...}: for strides 8, 16, 32, the last layer at that stride whose
    output every path to the model's output goes through (a block output, never a branch
    inside an inception or residual block).

    The level of a layer is round(log2(input side / output side)), which also places
    "valid"-padded maps (e.g. InceptionV3's 35 px at stride 8 on 299) correctly.
    Zero-padding layers (the input of a "valid" strided conv) are never a level.
    """
    side = model.inputs[0].shape[1]
    names = {}
    for layer in _cut_layers(model):
        shape = layer.output.shape
        if isinstance(layer, keras.layers.ZeroPadding2D) or len(shape) != 4 or not shape[1]:
            continue
        level = round(math.log2(side / shape[1]))
        if level in (3, 4, 5):
            names[f"P{level}"] = layer.name
    missing = {"P3", "P4", "P5"} - names.keys()
    if missing:
        raise DetsegError(f"{PREFIX}{model.name}: no layer found at levels {sorted(missing)}")
    return dict(sorted(names.items()))


def _cut_layers(model: keras.Model) -> list:
    """Layers (in graph order) whose output is the only tensor alive right after them.

    Walking the topologically sorted layers, a tensor is alive from its layer until its
    last consumer; where only the current layer's output is alive, all paths pass there.
    """
    layers = model.layers
    position = {id(layer): i for i, layer in enumerate(layers)}
    last_use = list(range(len(layers)))
    for i, layer in enumerate(layers):
        for tensor in keras.tree.flatten(layer.input) if i else ():
            # A KerasTensor records the layer that produced it in `_keras_history`.
            parent = position[id(tensor._keras_history.operation)]
            last_use[parent] = max(last_use[parent], i)
    cuts = []
    furthest = -1  # the latest last-use among earlier layers' outputs
    for i, layer in enumerate(layers):
        if furthest <= i and len(keras.tree.flatten(layer.output)) == 1:
            cuts.append(layer)
        furthest = max(furthest, last_use[i])
    return cuts
