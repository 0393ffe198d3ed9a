"""`kerascv:<name>`: a keras-cv backbone as a pyramid encoder (the optional `[kerascv]` extra).

keras-cv (TensorFlow backend only here) is imported inside `kerascv_backbone`, never at module
level. `<name>` is a key of `ARCHITECTURES`: keras-cv's own preset architectures, written out
so that a random-init build needs no download (keras-cv's presets and aliases fetch their
config from Kaggle). They are the families built from core Keras layers only, so a `.keras`
file of a detector on one loads in safe mode, with or without keras-cv installed.

The keras-cv model is built with `include_rescaling=False` on detseg's `image_input`, whose
`PIXELS_LAYER` already scales the 0..255 pixels to 0..1 (what `include_rescaling=True` would
do): the pixels are scaled once. P3/P4/P5 are the layers keras-cv names in
`pyramid_level_inputs`, enough for the YOLO head and for the U-Net (which upsamples from P3).
"""

import os

import keras

from detseg.backbones.pyramid import image_input, make_backbone
from detseg.errors import DetsegError

PREFIX = "kerascv:"
LEVELS = ("P3", "P4", "P5")

# name -> (keras_cv.models class, its architecture arguments), as keras-cv's presets define them.
ARCHITECTURES: dict[str, tuple[str, dict]] = {
    "yolo_v8_xs": ("YOLOV8Backbone", {"stackwise_channels": [32, 64, 128, 256], "stackwise_depth": [1, 2, 2, 1]}),
    "yolo_v8_s": ("YOLOV8Backbone", {"stackwise_channels": [64, 128, 256, 512], "stackwise_depth": [1, 2, 2, 1]}),
    "yolo_v8_m": ("YOLOV8Backbone", {"stackwise_channels": [96, 192, 384, 576], "stackwise_depth": [2, 4, 4, 2]}),
    "resnet18": (
        "ResNetBackbone",
        {
            "stackwise_filters": [64, 128, 256, 512],
            "stackwise_blocks": [2, 2, 2, 2],
            "stackwise_strides": [1, 2, 2, 2],
            "block_type": "basic_block",
        },
    ),
    "resnet50": (
        "ResNetBackbone",
        {
            "stackwise_filters": [64, 128, 256, 512],
            "stackwise_blocks": [3, 4, 6, 3],
            "stackwise_strides": [1, 2, 2, 2],
            "block_type": "block",
        },
    ),
}


def import_keras_cv():
    """The `keras_cv` module, or a one-line DetsegError when the backend or the extra is wrong."""
    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise DetsegError(
            f"{PREFIX} backbones need the TensorFlow backend, not {backend!r} (set KERAS_BACKEND=tensorflow)"
        )
    try:
        import keras_cv
    except ImportError as error:
        raise DetsegError(
            f"{PREFIX} backbones need keras-cv: pip install 'detseg[kerascv]' ({error})"
        ) from error
    return keras_cv


def kerascv_backbone(
    arch: str,
    input_shape=(None, None, 3),
    *,
    width: float = 1.0,
    weights: "str | None" = None,
    name: "str | None" = None,
) -> keras.Model:
    """Wrap the keras-cv backbone `arch` (an `ARCHITECTURES` key) with levels P3, P4, P5.

    `width` must stay 1.0 (keras-cv sizes come from the architecture); `weights`: None
    (random) or a local `.weights.h5` file saved from such a backbone with `save_weights`.
    """
    if arch not in ARCHITECTURES:
        raise DetsegError(
            f"unknown keras-cv backbone {arch!r} (valid: {', '.join(PREFIX + n for n in ARCHITECTURES)})"
        )
    if width != 1.0:
        raise DetsegError(f"{PREFIX}{arch} has no width multiplier, got width={width!r}")
    if weights is not None and not os.path.isfile(os.fspath(weights)):
        raise DetsegError(
            f"{PREFIX}{arch}: weights {os.fspath(weights)!r} is not a local file; keras-cv presets "
            "download from Kaggle, which detseg does not do: pass a local .weights.h5 file"
        )
    class_name, arguments = ARCHITECTURES[arch]
    keras_cv = import_keras_cv()
    inputs, pixels = image_input(input_shape)
    source = getattr(keras_cv.models, class_name)(
        **arguments, include_rescaling=False, input_shape=tuple(input_shape), input_tensor=pixels
    )
    layer_names = source.pyramid_level_inputs
    levels = {level: source.get_layer(layer_names[level]).output for level in LEVELS}
    return make_backbone(inputs, levels, name=name or f"kerascv_{arch}", weights=weights)
