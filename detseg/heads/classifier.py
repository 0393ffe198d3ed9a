"""Image classifiers: a backbone (a nested Model named "backbone") plus a classification top.

`top="gap"`: global average pooling, optional dropout, dense softmax — for any backbone.
`top="paper"`: the dense top of the original paper for LeNet-5, AlexNet and VGG, which
needs a fixed input size (it flattens the last feature map).

Images go in as RGB pixels 0..255, uint8 or float: the backbone scales them (its "pixels"
layer, see `detseg.backbones.pyramid`), after the optional grey conversion. Every output
layer (the softmax) computes in float32, also under a mixed-precision policy.

Transfer learning: `set_backbone_trainable(model, False)` freezes the backbone (its batch
norms then run in inference mode); recompile after every change of `trainable`.
"""

import keras
from keras import ops

from detseg.backbones import get_backbone
from detseg.distribute import cross_replica_sum, replicas_in_sync
from detseg.errors import DetsegError
from detseg.layers import RBFOutput, RGBToGrayscale, scale_channels

BACKBONE_LAYER = "backbone"
OUTPUT_LAYER = "predictions"
TOPS = ("gap", "paper")

# GoogLeNet's auxiliary classifiers: their losses are added with weight 0.3 in training.
AUX_LOSS_WEIGHT = 0.3
AUX_DROPOUT = 0.7


@keras.saving.register_keras_serializable(package="detseg")
class ImageClassifier(keras.Model):
    """A functional classifier that owns its loss, so plain `compile(optimizer)` + `fit()` train it.

    The loss is sparse categorical cross-entropy of the probabilities `[B, C]` against integer
    labels `[B]`, plus `aux_loss_weight` (default `AUX_LOSS_WEIGHT`) times that of each
    auxiliary output (GoogLeNet's, when the outputs are a dict), plus any layer losses (regularisers). It is built and saved
    like any functional model (`ImageClassifier(inputs, outputs, name=...)`).
    """

    def __init__(self, *args, aux_loss_weight: float = AUX_LOSS_WEIGHT, **kwargs):
        super().__init__(*args, **kwargs)
        self.aux_loss_weight = float(aux_loss_weight)

    def get_config(self) -> dict:
        return {**super().get_config(), "aux_loss_weight": self.aux_loss_weight}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        weight = config.pop("aux_loss_weight", AUX_LOSS_WEIGHT)
        model = super().from_config(config, custom_objects)
        model.aux_loss_weight = float(weight)
        return model

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        labels = ops.reshape(ops.cast(y, "int32"), (-1,))
        outputs = y_pred if isinstance(y_pred, dict) else {OUTPUT_LAYER: y_pred}
        if sample_weight is None:
            weight = ops.ones(ops.shape(labels), "float32")
        else:
            weight = ops.reshape(ops.cast(sample_weight, "float32"), (-1,))
        # The weighted mean over the whole batch, also when a TF strategy splits it over replicas
        # (detseg.distribute): each replica's sum over the batch's total weight.
        total_weight = ops.maximum(cross_replica_sum(ops.sum(weight)), 1e-9)
        total = 0.0
        for name, probs in outputs.items():
            losses = keras.losses.sparse_categorical_crossentropy(labels, ops.cast(probs, "float32"))
            loss = ops.sum(losses * weight) / total_weight
            total = total + (1.0 if name == OUTPUT_LAYER else self.aux_loss_weight) * loss
        if self.losses:
            total = total + ops.sum(self.losses) / replicas_in_sync()
        return total


def _lenet5_top(x, num_classes: int, dropout: float, width: float):
    """C5 (120 maps of 5x5, i.e. dense on a 5x5 input), F6 (84), RBF output, softmax."""
    x = keras.layers.Conv2D(scale_channels(120, width), 5, activation="tanh", name="c5")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(scale_channels(84, width), activation="tanh", name="f6")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name="dropout")(x)
    x = RBFOutput(num_classes, logits=True, dtype="float32", name="rbf")(x)
    return keras.layers.Softmax(dtype="float32", name=OUTPUT_LAYER)(x)


def _dense_4096_top(x, num_classes: int, dropout: float, width: float):
    """AlexNet's and VGG's top: flatten, two dense 4096 ReLU layers (each + dropout), softmax."""
    x = keras.layers.Flatten(name="flatten")(x)
    for i in (1, 2):
        x = keras.layers.Dense(scale_channels(4096, width), activation="relu", name=f"fc{i}")(x)
        if dropout:
            x = keras.layers.Dropout(dropout, name=f"dropout{i}")(x)
    return keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name=OUTPUT_LAYER)(x)


def _fashion_top(x, num_classes: int, dropout: float, width: float):
    """The Fashion-MNIST CNN's top: flatten, dense 128 and 64 ReLU (each + dropout), softmax."""
    x = keras.layers.Flatten(name="flatten")(x)
    for i, units in enumerate((128, 64), start=1):
        x = keras.layers.Dense(scale_channels(units, width), activation="relu", name=f"fc{i}")(x)
        if dropout:
            x = keras.layers.Dropout(dropout, name=f"dropout{i}")(x)
    return keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name=OUTPUT_LAYER)(x)


# name -> (top builder, backbone arguments that reproduce the paper's layer table)
PAPER_TOPS = {
    "lenet5": (_lenet5_top, {"padding": "valid"}),
    "alexnet": (_dense_4096_top, {"padding": "valid"}),
    "vgg16": (_dense_4096_top, {}),
    "vgg19": (_dense_4096_top, {}),
    "fashion_cnn": (_fashion_top, {}),
}


def _gap_top(x, num_classes: int, dropout: float, name: str = OUTPUT_LAYER, prefix: str = ""):
    x = keras.layers.GlobalAveragePooling2D(name=f"{prefix}gap")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name=f"{prefix}dropout")(x)
    return keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name=name)(x)


def _aux_classifier(x, num_classes: int, width: float, key: str):
    """GoogLeNet's auxiliary head: 5x5/3 avg pool, 1x1 conv 128, dense 1024, 70% dropout."""
    x = keras.layers.AveragePooling2D(5, strides=3, name=f"aux_{key}_pool")(x)
    x = keras.layers.Conv2D(
        scale_channels(128, width), 1, activation="relu", name=f"aux_{key}_conv"
    )(x)
    x = keras.layers.Flatten(name=f"aux_{key}_flatten")(x)
    x = keras.layers.Dense(scale_channels(1024, width), activation="relu", name=f"aux_{key}_fc")(x)
    x = keras.layers.Dropout(AUX_DROPOUT, name=f"aux_{key}_dropout")(x)
    return keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name=f"aux_{key}")(x)


def build_classifier(
    name: str,
    input_shape,
    num_classes: int,
    weights: "str | None" = None,
    dropout: float = 0.0,
    top: str = "gap",
    *,
    aux_classifiers: bool = False,
    aux_loss_weight: float = AUX_LOSS_WEIGHT,
    grayscale: bool = False,
    **backbone_kwargs,
) -> keras.Model:
    """Backbone `name` (see `detseg.backbones.get_backbone`) + a softmax classification top.

    Returns an `ImageClassifier` from images `[B, H, W, C]` to class probabilities
    `[B, num_classes]`; it owns its loss (sparse categorical cross-entropy). `weights` goes to the backbone;
    `dropout` is applied before the output layer (and after each hidden dense layer of a
    paper top; the papers used 0.5 for AlexNet/VGG and 0.4 for GoogLeNet). With
    `aux_classifiers=True` (GoogLeNet only) the outputs are a dict
    `{"predictions", "aux_4a", "aux_4d"}`, whose losses count `aux_loss_weight` each.
    `grayscale=True` converts the RGB input to one grey channel (`RGBToGrayscale`) in front
    of a one-channel backbone. `backbone_kwargs` (e.g. `width`) go to the backbone builder.
    """
    _validate(name, input_shape, num_classes, dropout, top, aux_classifiers)
    width = backbone_kwargs.get("width", 1.0)
    if top == "paper":
        top_builder, paper_kwargs = PAPER_TOPS[name]
        backbone_kwargs = {**paper_kwargs, **backbone_kwargs}
    if aux_classifiers:
        backbone_kwargs["aux_outputs"] = True
    # === Layers ===
    backbone_shape = (*tuple(input_shape)[:2], 1) if grayscale else input_shape
    backbone = get_backbone(
        name, backbone_shape, weights=weights, name=BACKBONE_LAYER, **backbone_kwargs
    )
    inputs = keras.Input(input_shape, name="image")
    features = backbone(RGBToGrayscale(name="grayscale")(inputs) if grayscale else inputs)
    deepest = features[list(backbone.feature_info)[-1]]
    if top == "paper":
        outputs = top_builder(deepest, num_classes, dropout, width)
    else:
        outputs = _gap_top(deepest, num_classes, dropout)
    if aux_classifiers:
        outputs = {OUTPUT_LAYER: outputs}
        for key in ("4a", "4d"):
            outputs[f"aux_{key}"] = _aux_classifier(features[f"aux_{key}"], num_classes, width, key)
    # === Functional Model ===
    return ImageClassifier(
        inputs, outputs, name=f"{name.replace(':', '_')}_classifier", aux_loss_weight=aux_loss_weight
    )


def _validate(name, input_shape, num_classes, dropout, top, aux_classifiers) -> None:
    if top not in TOPS:
        raise DetsegError(f"unknown classifier top {top!r} (valid: {', '.join(TOPS)})")
    if top == "paper":
        if name not in PAPER_TOPS:
            raise DetsegError(
                f"top='paper' exists for {', '.join(PAPER_TOPS)}, not {name!r}; use top='gap'"
            )
        if None in tuple(input_shape[:2]):
            raise DetsegError(
                f"top='paper' flattens the last feature map, so it needs a fixed input size; "
                f"got input_shape={tuple(input_shape)}"
            )
    if not (isinstance(num_classes, int) and num_classes >= 2):
        raise DetsegError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if not 0.0 <= dropout < 1.0:
        raise DetsegError(f"dropout must be in [0, 1), got {dropout!r}")
    if aux_classifiers and (name != "googlenet" or None in tuple(input_shape[:2])):
        raise DetsegError(
            "aux_classifiers exist only for 'googlenet' with a fixed input size; "
            f"got name={name!r}, input_shape={tuple(input_shape)}"
        )


def set_backbone_trainable(model: keras.Model, trainable: bool) -> None:
    """Freeze (False) or unfreeze (True) the nested "backbone" of a classifier.

    A frozen backbone keeps its weights and batch-norm statistics. Recompile the model
    afterwards so that the change takes effect in `fit`.
    """
    try:
        backbone = model.get_layer(BACKBONE_LAYER)
    except ValueError as error:
        raise DetsegError(f"model {model.name!r} has no layer named {BACKBONE_LAYER!r}") from error
    backbone.trainable = trainable
