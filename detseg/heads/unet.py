"""U-Net (Ronneberger et al. 2015) semantic segmenter on the original encoder or any backbone.

The encoder is a pyramid backbone (dict outputs `{"Pk": ...}`, level `Pk` at stride `2**k`):
one of `detseg.backbones`, or `unet_encoder`, the paper's contracting path, which also has a
full-resolution level P0. The decoder starts from the coarsest level and climbs one stride
halving at a time: upsample x2, concatenate the encoder's level at that stride (the skip
connection), two 3x3 conv-BN-ReLU, optional dropout. Strides the encoder has no level for
get no skip (a stride-8 backbone climbs 4 -> 2 without one), except stride 1, where the
input image itself (scaled to 0..1) is the skip so that the last stage sees full-resolution
detail. A 1x1
conv then gives the logits.

Convs pad "same" (the paper's are unpadded and crop the skips), so the output has the
input's size. Inputs are pixels [B, S, S, C] 0..255, uint8 or float (the encoder scales
them, see `detseg.backbones.pyramid`); outputs raw logits
[B, S, S, K] (K = num_classes, or 1 logit for binary segmentation when num_classes == 1).
`fit()` takes `(images, labels)` with labels int [B, S, S] and `ignore_index` on unlabelled
pixels; `predict()` returns the class map int32 [B, S, S] (or probabilities [B, S, S, K]).
"""

from __future__ import annotations

import copy
import math

import keras
from keras import ops

from detseg.backbones.pyramid import feature_info, image_input, make_backbone
from detseg.distribute import cross_replica_sum, replicas_in_sync
from detseg.errors import DetsegError
from detseg.heads.decoded import DecodedPredictions
from detseg.layers.conv import conv_bn_act, scale_channels

__all__ = [
    "LOSSES",
    "UPSAMPLINGS",
    "UNetSegmenter",
    "build_unet",
    "segmentation_loss_terms",
    "unet_encoder",
]

LOSSES = ("ce", "dice", "ce+dice")
UPSAMPLINGS = ("transpose", "bilinear")
UNET_BACKBONE = "unet"
"""The `build_unet` backbone name of the paper's own encoder (`unet_encoder`)."""

DEFAULT_IGNORE_INDEX = 255  # the label of unlabelled pixels, as `detseg.data.IGNORE_INDEX`
DEFAULT_DICE_SMOOTH = 1.0  # pixels added to the Dice numerator and denominator
MIN_DECODER_FILTERS = 8  # floor of the default decoder widths


def _double_conv(x, filters: int, name: str):
    """The U-Net unit: two 3x3 conv-BN-ReLU (layers f"{name}_1_conv" ... f"{name}_2_act")."""
    x = conv_bn_act(x, filters, 3, name=f"{name}_1")
    return conv_bn_act(x, filters, 3, name=f"{name}_2")


def unet_encoder(
    input_shape=(None, None, 3),
    *,
    width: float = 1.0,
    depth: int = 4,
    weights: str | None = None,
    name: str = "unet_encoder",
) -> keras.Model:
    """The U-Net contracting path as a backbone with levels P0 (full resolution) .. P<depth>.

    Level k is a double 3x3 conv block with `64 * 2**k * width` filters, after a 2x2 max pool
    for k > 0; P<depth> is the bottleneck (1024 filters at width 1 and depth 4, as in the
    paper). The input side must be a multiple of `2**depth`. `weights`: None or a local
    `.weights.h5` file, as for every backbone.
    """
    if not (isinstance(depth, int) and depth >= 1) or not width > 0:
        raise DetsegError(
            f"unet_encoder needs an integer depth >= 1 and width > 0, got depth={depth!r}, "
            f"width={width!r}"
        )
    inputs, pixels = image_input(input_shape)
    # === Layers ===
    levels = {}
    x = pixels
    for k in range(depth + 1):
        if k:
            x = keras.layers.MaxPooling2D(2, name=f"pool{k}")(x)
        x = _double_conv(x, scale_channels(64 * 2**k, width), name=f"enc{k}")
        levels[f"P{k}"] = x
    # === Functional Model ===
    return make_backbone(inputs, levels, name=name, weights=weights)


def segmentation_loss_terms(
    y,
    logits,
    *,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    class_weights=None,
    smooth: float = DEFAULT_DICE_SMOOTH,
    sample_weight=None,
):
    """Cross-entropy and soft Dice loss of logits against a label map: `(ce, dice)` scalars.

    Args:
        y: int labels [B, H, W] (or [B, H, W, 1]); `ignore_index` marks unlabelled pixels.
        logits: [B, H, W, K] raw scores; K == 1 is binary segmentation (labels 0 / 1), treated
            as the two-class logits [0, z], whose softmax is [1 - sigmoid(z), sigmoid(z)]: the
            cross-entropy is then exactly sigmoid BCE and the Dice is over background and
            foreground.
        class_weights: None or one weight per label value (K, or 2 when K == 1) for the CE.
        smooth: added to the numerator and denominator of each class's Dice (in pixels), so
            that a class with few pixels in the batch does not give a jumpy 0/1 score.
        sample_weight: None or [B] weights of the images (of both terms).

    CE is the mean over labelled pixels of -log p(label), each weighted by its class weight
    and divided by the sum of those weights (PyTorch's weighted mean). Dice is, over the
    whole batch and for each class c present in the labels, `(2 * sum(p_c * t_c) + smooth) /
    (sum(p_c) + sum(t_c) + smooth)` with p the softmax and t the one-hot labels, both zero on
    ignored pixels; the loss is 1 minus its mean over the present classes. A batch with no
    labelled pixel gives 0 for both terms, and zero (finite) gradients.

    Split over the replicas of a TF strategy (`detseg.distribute`), both are this replica's
    share: the pixel weights and the Dice sums are summed over the replicas, so the shares add
    up to the terms of the whole batch (and so do the gradients Keras sums).
    """
    logits = ops.cast(logits, "float32")
    if logits.shape[-1] == 1:
        logits = ops.concatenate([ops.zeros_like(logits), logits], axis=-1)
    num_labels = logits.shape[-1]
    y = ops.cast(y, "int32")
    if len(y.shape) == len(logits.shape):
        y = ops.squeeze(y, axis=-1)
    valid = ops.not_equal(y, ignore_index)
    # Ignored pixels get label 0 so that every per-pixel value stays finite; weight 0 drops them.
    onehot = ops.one_hot(ops.where(valid, y, 0), num_labels, dtype="float32")
    weight = ops.cast(valid, "float32")
    if sample_weight is not None:
        weight = weight * ops.reshape(ops.cast(sample_weight, "float32"), (-1, 1, 1))

    ce_weight = weight
    if class_weights is not None:
        per_class = ops.convert_to_tensor(class_weights, dtype="float32")
        ce_weight = weight * ops.sum(onehot * per_class, axis=-1)
    pixel_ce = -ops.sum(onehot * ops.log_softmax(logits, axis=-1), axis=-1)
    ce = _safe_divide(ops.sum(ce_weight * pixel_ce), cross_replica_sum(ops.sum(ce_weight)))

    probs = ops.softmax(logits, axis=-1) * weight[..., None]
    target = onehot * weight[..., None]
    intersection, probs_area, target_area = cross_replica_sum(
        [ops.sum(v, axis=(0, 1, 2)) for v in (probs * target, probs, target)]
    )
    dice = _safe_divide(2.0 * intersection + smooth, probs_area + target_area + smooth)
    present = ops.cast(target_area > 0, "float32")
    dice_loss = _safe_divide(ops.sum(present * (1.0 - dice)), ops.sum(present))
    return ce, dice_loss / replicas_in_sync()


def _safe_divide(numerator, denominator):
    """numerator / denominator, and 0 where the denominator is 0 (then the numerator is too)."""
    return numerator / ops.where(denominator > 0, denominator, ops.ones_like(denominator))


@keras.saving.register_keras_serializable(package="detseg")
class UNetSegmenter(DecodedPredictions, keras.Model):
    """U-Net decoder with skip connections on a pyramid encoder; outputs logits [B, S, S, K].

    Args:
        encoder: `keras.Model` with a fixed square input (S, S, C) and dict outputs
            `{"Pk": [B, S / 2**k, S / 2**k, ck]}` (`unet_encoder` or a detseg backbone);
            S must be a multiple of the coarsest level's stride.
        num_classes: K classes, labels 0..K-1; 1 means binary segmentation (labels 0 / 1,
            one logit, sigmoid).
        decoder_filters: widths of the decoder stages, coarsest first: one per stride from
            half the coarsest level's stride down to 1. None: the encoder's channels at the
            stage's stride, or half the previous stage's where the encoder has no level
            there; never below 8.
        upsampling: "transpose" (2x2 stride-2 Conv2DTranspose, the paper's up-conv) or
            "bilinear" (bilinear UpSampling2D then a 1x1 conv).
        dropout: rate of a Dropout after each decoder stage (0: none).
        loss: "ce", "dice" or "ce+dice" (their sum); see `segmentation_loss_terms`.
        class_weights: None or one CE weight per label value (K, or 2 when num_classes == 1).
        ignore_index: label of unlabelled pixels (left out of both losses).
        dice_smooth: the Dice smoothing term, in pixels.
        output_probabilities: `predict()` returns probabilities [B, S, S, K] instead of the
            class map.

    Decoder layers are named by the level of their stride: f"{level}_up", f"{level}_concat",
    f"{level}_dec_1_conv" ... f"{level}_dec_2_act", f"{level}_dropout"; then "logits".
    `levels` holds the encoder levels (the skips), finest first.
    """

    def __init__(
        self,
        encoder: keras.Model,
        num_classes: int,
        decoder_filters=None,
        upsampling: str = "transpose",
        dropout: float = 0.0,
        loss: str = "ce",
        class_weights=None,
        ignore_index: int = DEFAULT_IGNORE_INDEX,
        dice_smooth: float = DEFAULT_DICE_SMOOTH,
        output_probabilities: bool = False,
        **kwargs,
    ):
        # === Layers ===
        input_shape = tuple(encoder.input_shape[1:])
        pyramid = feature_info(encoder)
        levels = {stride: level for level, (stride, _) in pyramid.items()}  # finest first
        if not levels:
            raise DetsegError(f"encoder {encoder.name!r} has no pyramid level output (P0, P1, ...)")
        coarsest = max(levels)
        if (
            len(input_shape) != 3
            or None in input_shape
            or input_shape[0] != input_shape[1]
            or input_shape[0] % coarsest
        ):
            raise DetsegError(
                f"the encoder needs a fixed square input shape (S, S, C) with S a multiple of "
                f"{coarsest} (its coarsest stride), got {input_shape}"
            )
        input_size = input_shape[0]
        for stride, level in levels.items():
            got = tuple(encoder.output[level].shape[1:3])
            if got != (input_size // stride,) * 2:
                raise DetsegError(
                    f"encoder {encoder.name!r} level {level} is {got} on a {input_size} px input, "
                    f"not {input_size // stride} (stride {stride}): it must pad 'same'"
                )
        num_labels = max(2, num_classes) if isinstance(num_classes, int) else None
        if num_labels is None or num_classes < 1 or upsampling not in UPSAMPLINGS:
            raise DetsegError(
                f"need an integer num_classes >= 1 and upsampling in {UPSAMPLINGS}; got "
                f"num_classes={num_classes!r}, upsampling={upsampling!r}"
            )
        if loss not in LOSSES or not 0 <= dropout < 1 or not dice_smooth >= 0:
            raise DetsegError(
                f"need loss in {LOSSES}, 0 <= dropout < 1 and dice_smooth >= 0; got "
                f"loss={loss!r}, dropout={dropout!r}, dice_smooth={dice_smooth!r}"
            )
        if class_weights is not None and (
            len(class_weights) != num_labels
            or not all(math.isfinite(w) and w >= 0 for w in class_weights)
        ):
            raise DetsegError(
                f"class_weights needs {num_labels} finite weights >= 0 (one per label value), "
                f"got {class_weights!r}"
            )
        if (
            isinstance(ignore_index, bool)
            or not isinstance(ignore_index, int)
            or (0 <= ignore_index < num_labels)
        ):
            raise DetsegError(
                f"ignore_index must be an integer outside the labels 0..{num_labels - 1}, "
                f"got {ignore_index!r}"
            )
        stage_strides = [coarsest >> i for i in range(1, int(math.log2(coarsest)) + 1)]
        channels = {stride: c for stride, c in pyramid.values()}
        decoder_filters = self._decoder_filters(decoder_filters, channels, stage_strides)

        # === Functional Model ===
        images = keras.Input(shape=input_shape, name="images")
        features = encoder(images)
        x = features[levels[coarsest]]
        for stride, filters in zip(stage_strides, decoder_filters, strict=True):
            level = f"P{int(math.log2(stride))}"
            if upsampling == "transpose":
                x = keras.layers.Conv2DTranspose(filters, 2, strides=2, name=f"{level}_up")(x)
            else:
                x = keras.layers.UpSampling2D(
                    2, interpolation="bilinear", name=f"{level}_upsample"
                )(x)
                x = keras.layers.Conv2D(filters, 1, name=f"{level}_up")(x)
            if stride in levels:
                x = keras.layers.Concatenate(name=f"{level}_concat")([x, features[levels[stride]]])
            elif stride == 1:  # no full-resolution encoder level: the image is the skip
                skip = keras.layers.Rescaling(1.0 / 255.0, name="image_skip")(images)
                x = keras.layers.Concatenate(name=f"{level}_concat")([x, skip])
            x = _double_conv(x, filters, name=f"{level}_dec")
            if dropout:
                x = keras.layers.Dropout(dropout, name=f"{level}_dropout")(x)
        # Logits stay float32 under a mixed-precision policy (softmax, log and the losses).
        logits = keras.layers.Conv2D(
            1 if num_classes == 1 else num_classes, 1, dtype="float32", name="logits"
        )(x)
        super().__init__(inputs=images, outputs=logits, **kwargs)

        # === Config ===
        self.encoder = encoder
        self.num_classes = int(num_classes)
        self.decoder_filters = tuple(decoder_filters)
        self.upsampling = upsampling
        self.dropout = float(dropout)
        self.loss_name = loss
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]
        self.ignore_index = int(ignore_index)
        self.dice_smooth = float(dice_smooth)
        self.output_probabilities = bool(output_probabilities)
        self.input_size = int(input_size)
        self.levels = tuple(levels.values())
        self.ce_loss_tracker = keras.metrics.Mean(name="ce_loss")
        self.dice_loss_tracker = keras.metrics.Mean(name="dice_loss")

    @staticmethod
    def _decoder_filters(decoder_filters, channels: dict, stage_strides: list) -> list:
        """The checked `decoder_filters`, or the default widths (see the class docstring)."""
        if decoder_filters is not None:
            if len(decoder_filters) != len(stage_strides) or not all(
                isinstance(f, int) and f >= 1 for f in decoder_filters
            ):
                raise DetsegError(
                    f"decoder_filters needs {len(stage_strides)} integers >= 1, one per decoder "
                    f"stage at strides {stage_strides}; got {decoder_filters!r}"
                )
            return list(decoder_filters)
        filters = []
        previous = channels[max(channels)]
        for stride in stage_strides:
            previous = max(MIN_DECODER_FILTERS, channels.get(stride, previous // 2))
            filters.append(previous)
        return filters

    # === Training ===

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The chosen loss ("ce", "dice" or their sum) of logits `y_pred` against labels `y`.

        `y`: int [B, S, S] labels with `ignore_index` on unlabelled pixels; `sample_weight`
        [B] optionally weighs images. Both terms are logged as `ce_loss` and `dice_loss`
        whichever of them the loss uses.
        """
        ce, dice = segmentation_loss_terms(
            y,
            y_pred,
            ignore_index=self.ignore_index,
            class_weights=self.class_weights,
            smooth=self.dice_smooth,
            sample_weight=sample_weight,
        )
        replicas = replicas_in_sync()  # the terms are this replica's shares: log the batch's
        self.ce_loss_tracker.update_state(ce * replicas)
        self.dice_loss_tracker.update_state(dice * replicas)
        total = {"ce": ce, "dice": dice, "ce+dice": ce + dice}[self.loss_name]
        if self.losses:
            total = total + ops.sum(self.losses) / replicas
        return total

    # === Inference ===

    def postprocess(self, logits):
        """Logits [B, S, S, K] -> class map int32 [B, S, S] (binary: probability > 0.5, i.e.
        logit > 0), or probabilities [B, S, S, K] (softmax; sigmoid when K == 1)."""
        logits = ops.cast(logits, "float32")
        if self.num_classes == 1:
            if self.output_probabilities:
                return ops.sigmoid(logits)
            return ops.cast(logits[..., 0] > 0, "int32")
        if self.output_probabilities:
            return ops.softmax(logits, axis=-1)
        return ops.cast(ops.argmax(logits, axis=-1), "int32")

    # === Config ===

    def get_config(self) -> dict:
        return {
            "name": self.name,
            "trainable": self.trainable,
            "encoder": keras.saving.serialize_keras_object(self.encoder),
            "num_classes": self.num_classes,
            "decoder_filters": list(self.decoder_filters),
            "upsampling": self.upsampling,
            "dropout": self.dropout,
            "loss": self.loss_name,
            "class_weights": self.class_weights,
            "ignore_index": self.ignore_index,
            "dice_smooth": self.dice_smooth,
            "output_probabilities": self.output_probabilities,
        }

    @classmethod
    def from_config(cls, config: dict) -> UNetSegmenter:
        config = dict(config)
        # A copy: deserializing a functional model empties the dict it is given.
        config["encoder"] = keras.saving.deserialize_keras_object(copy.deepcopy(config["encoder"]))
        return cls(**config)


def build_unet(
    num_classes: int,
    backbone: str | keras.Model = UNET_BACKBONE,
    input_shape: tuple[int, int, int] = (256, 256, 3),
    *,
    width: float = 1.0,
    depth: int | None = None,
    weights: str | None = None,
    **kwargs,
) -> UNetSegmenter:
    """A `UNetSegmenter` on `backbone`: "unet" (`unet_encoder`), a `detseg.backbones` name,
    "applications:<Name>", or a built encoder model (then input_shape, width, depth and
    weights are not used).

    `width` scales the encoder's channels (not for applications); `depth` is the number of
    poolings of the "unet" encoder (default 4); `weights`: a local weights file of the
    encoder (or "imagenet" for applications). `kwargs` go to `UNetSegmenter`.
    """
    if isinstance(backbone, keras.Model):
        return UNetSegmenter(backbone, num_classes, **kwargs)
    if backbone == UNET_BACKBONE:
        encoder = unet_encoder(
            input_shape, width=width, depth=4 if depth is None else depth, weights=weights
        )
        return UNetSegmenter(encoder, num_classes, **kwargs)
    from detseg.backbones import APPLICATIONS_PREFIX, get_backbone

    if depth is not None:
        raise DetsegError(f"depth is an argument of the 'unet' encoder only, not of {backbone!r}")
    if backbone.startswith(APPLICATIONS_PREFIX):
        if width != 1.0:
            raise DetsegError(f"{backbone} has no width multiplier, got width={width!r}")
        encoder = get_backbone(backbone, input_shape, weights=weights)
    else:
        encoder = get_backbone(backbone, input_shape, width=width, weights=weights)
    return UNetSegmenter(encoder, num_classes, **kwargs)
