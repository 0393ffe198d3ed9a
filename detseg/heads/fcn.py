"""Sliding-window detection with a classifier turned fully convolutional (Sermanet et al. 2014).

`to_fully_convolutional(classifier)` rebuilds a classifier trained on fixed-size crops so that
it runs on images of any size >= the crop size (the "window") and returns a grid of class
probabilities `[B, Gh, Gw, C]`, cell (i, j) scoring the window whose top-left corner is at
(i * stride_y, j * stride_x) input pixels. The convolutional part is copied layer by layer;
the top becomes convolutional with the same weights:

- Flatten + Dense(n) on an `h x w x c` map -> Conv2D(n, (h, w), "valid") (the Dense kernel
  `[h*w*c, n]` reshaped to `[h, w, c, n]`, the order Flatten reads a channels-last map in);
- a later Dense -> a 1x1 Conv2D; per-vector layers (activations, softmax, batch norm, RBF,
  merges) apply unchanged to every cell, on the channel axis;
- GlobalAveragePooling2D (GlobalMaxPooling2D) over an `h x w` map -> AveragePooling2D
  (MaxPooling2D) of pool `(h, w)` and stride 1: each cell averages the same `h x w` block
  the classifier would see in its window, and a Dense after it is then a 1x1 conv;
- dropout and noise layers are dropped (identity at inference).

One pass of the FCN shares the convolutions of overlapping windows, so it is far faster than
cropping each window (`naive_sliding_windows`, the reference). For nets with "valid" padding
each cell equals the classifier run on its window; with "same" padding the cells away from
the border see real pixels where the crop saw zero padding, so they differ slightly.

`SlidingWindowDetector` turns the grids (at one or several scales) into boxes with NMS,
returning the `Detector` contract: per image `{"boxes" [N, 4] xyxy original pixels,
"scores" [N], "labels" [N] int32}`.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import keras
import numpy as np

from detseg.boxes import clip_boxes, nms
from detseg.errors import DetsegError
from detseg.layers import RBFOutput

__all__ = [
    "SlidingWindowDetector",
    "grid_shape",
    "naive_sliding_windows",
    "to_fully_convolutional",
    "total_stride",
    "window_size",
]

# Identity at inference: dropped from the FCN.
_INFERENCE_IDENTITY = (
    keras.layers.Dropout,  # SpatialDropout1D/2D/3D subclass it
    keras.layers.GaussianNoise,
    keras.layers.GaussianDropout,
    keras.layers.AlphaDropout,
)
# Layers acting on each vector independently along its last axis: after the top is made
# convolutional they apply unchanged to every grid cell.
_PER_VECTOR = (
    keras.layers.Activation,
    keras.layers.Softmax,
    keras.layers.ReLU,
    keras.layers.LeakyReLU,
    keras.layers.ELU,
    keras.layers.BatchNormalization,
    keras.layers.Add,
    keras.layers.Subtract,
    keras.layers.Multiply,
    keras.layers.Average,
    keras.layers.Maximum,
    keras.layers.Minimum,
    keras.layers.Concatenate,
    RBFOutput,
)
# Layers tied to a fixed layout or to arbitrary code, which cannot run on a bigger map.
_REFUSED = (
    keras.layers.RNN,
    keras.layers.Bidirectional,
    keras.layers.Lambda,
    keras.layers.Reshape,
    keras.layers.Permute,
    keras.layers.RepeatVector,
)
_GLOBAL_POOLS = {
    keras.layers.GlobalAveragePooling2D: keras.layers.AveragePooling2D,
    keras.layers.GlobalMaxPooling2D: keras.layers.MaxPooling2D,
}
# A size no realistic total stride fails to divide (2^6 * 3^2 * 5 * 7): shapes are symbolic,
# so measuring the grid at window + this many pixels costs nothing.
_STRIDE_PROBE = 20160


# === Conversion ===
def to_fully_convolutional(classifier: keras.Model) -> keras.Model:
    """The fully convolutional copy of `classifier` (a Sequential or functional Model).

    `classifier` maps images `[B, H, W, C]` of a fixed size to probabilities `[B, K]`. The
    returned Model maps images `[B, H', W', C]` with H' >= H, W' >= W to `[B, Gh, Gw, K]`;
    its weights are copies (training one does not change the other). Nested models (such as
    the "backbone" of `build_classifier`) are rebuilt nested, on variable-size inputs.
    The result carries `window_size` = (H, W), which `window_size()` reads.

    Raises DetsegError naming the layer it cannot convert: a Dense on a non-flattened input,
    recurrent, reshaping or Lambda layers, or weights it does not know how to move.
    """
    if not isinstance(classifier, keras.Model):
        raise DetsegError(f"expected a keras.Model classifier, got {type(classifier).__name__}")
    window = window_size(classifier)
    if len(classifier.outputs) != 1:
        names = getattr(classifier, "output_names", None) or [t.name for t in classifier.outputs]
        raise DetsegError(
            f"classifier {classifier.name!r} has several outputs ({', '.join(names)}); "
            "convert a model with one probability output [B, K] (e.g. without aux_classifiers)"
        )
    channels = classifier.input_shape[-1]
    inputs = keras.Input((None, None, channels), name=classifier.inputs[0].name)
    fcn = _TopConverter().rebuild(classifier, inputs, name=f"{classifier.name}_fcn")
    if len(fcn.output.shape) != 4:
        raise DetsegError(
            f"classifier {classifier.name!r} does not end in a [B, K] output after a "
            f"Flatten or global pooling: its FCN output has shape {fcn.output.shape}"
        )
    fcn.window_size = window
    return fcn


class _TopConverter:
    """Rebuilds a model graph on a new input, converting its top layer by layer.

    Each original layer is converted once (shared layers stay shared), keeping its name.
    `_pending` maps the id of each tensor that stands for an original *flattened* map to
    (tensor, (h, w)): the map size the next Dense's kernel covers.
    """

    def __init__(self):
        self._layers: dict[int, keras.layers.Layer] = {}
        self._pending: dict[int, tuple[object, tuple[int, int]]] = {}

    def rebuild(self, model: keras.Model, inputs, name: str) -> keras.Model:
        """`model` rebuilt on the KerasTensor `inputs`, as a Model called `name`."""
        if isinstance(model, keras.Sequential):
            x = inputs
            for layer in model.layers:
                x = self.call(layer, x)
            outputs = x
        else:
            # clone_model walks a functional graph; call_function converts each original layer.
            try:
                outputs = keras.models.clone_model(
                    model,
                    input_tensors=inputs,
                    clone_function=lambda layer: layer,
                    call_function=self.call,
                ).output
            except ValueError as error:  # subclassed models, several inputs
                raise DetsegError(
                    f"cannot convert model {model.name!r} ({type(model).__name__}): only "
                    f"Sequential and functional models with one image input can be walked: {error}"
                ) from error
        for tensor in keras.tree.flatten(outputs):
            if id(tensor) in self._pending:
                raise DetsegError(
                    f"model {model.name!r} ends in a Flatten: its output cannot be made "
                    "convolutional outside it"
                )
        return keras.Model(inputs, outputs, name=name)

    def call(self, layer, *args, **kwargs):
        """The converted `layer` applied to the new tensors `args` (clone_model's call_function)."""
        if isinstance(layer, keras.Model):
            return self._call_nested(layer, *args, **kwargs)
        if isinstance(layer, _INFERENCE_IDENTITY):
            return args[0]
        original_in = layer.input
        in_ranks = {len(t.shape) for t in keras.tree.flatten(original_in)}
        if isinstance(layer, _REFUSED) or not in_ranks <= {2, 4}:
            raise DetsegError(
                f"cannot make layer {layer.name!r} ({type(layer).__name__}) convolutional: "
                f"it takes inputs of shape {_shapes(original_in)}"
            )
        if any(id(t) in self._pending for t in keras.tree.flatten(args)) and not isinstance(
            layer, keras.layers.Dense
        ):
            raise DetsegError(
                f"cannot make layer {layer.name!r} ({type(layer).__name__}) convolutional: it "
                "takes a flattened map, and only a Dense (or dropout) may follow a Flatten"
            )
        if isinstance(layer, keras.layers.Flatten):
            return self._flatten(layer, args[0])
        if isinstance(layer, tuple(_GLOBAL_POOLS)):
            return self._global_pool(layer, args[0])
        if isinstance(layer, keras.layers.Dense):
            return self._dense(layer, args[0])
        if in_ranks == {2} and not isinstance(layer, _PER_VECTOR):
            raise DetsegError(
                f"cannot make layer {layer.name!r} ({type(layer).__name__}) convolutional: it "
                "acts on flattened vectors and is not known to act on each one independently"
            )
        config = layer.get_config()
        if in_ranks == {2} and "axis" in config:
            config["axis"] = _last_axis(layer, config["axis"])
        return self._apply(layer, lambda: type(layer).from_config(config), *args, **kwargs)

    def _call_nested(self, model: keras.Model, *args, **kwargs):
        if id(model) not in self._layers:
            inner_in = keras.Input(
                args[0].shape[1:], dtype=args[0].dtype, name=model.inputs[0].name
            )
            self._layers[id(model)] = self.rebuild(model, inner_in, name=model.name)
        return self._layers[id(model)](*args, **kwargs)

    def _flatten(self, layer, x):
        """Keep the map; the Dense that follows covers all of it."""
        shape = layer.input.shape
        if len(shape) == 2:
            return x
        if getattr(layer, "data_format", "channels_last") != "channels_last":
            raise DetsegError(
                f"cannot convert layer {layer.name!r}: only channels_last is supported"
            )
        self._pending[id(x)] = (x, (shape[1], shape[2]))
        return x

    def _global_pool(self, layer, x):
        shape = layer.input.shape
        if layer.data_format != "channels_last":
            raise DetsegError(
                f"cannot convert layer {layer.name!r}: only channels_last is supported"
            )
        pool = self._cached(
            layer,
            lambda: _GLOBAL_POOLS[type(layer)](
                (shape[1], shape[2]), strides=1, padding="valid", name=layer.name
            ),
        )
        return pool(x)

    def _dense(self, layer, x):
        original_in = layer.input.shape
        if len(original_in) != 2:
            raise DetsegError(
                f"cannot convert Dense layer {layer.name!r}: its input {tuple(original_in)} is not "
                "flattened (a Dense on a map acts per position; use a 1x1 Conv2D)"
            )
        kernel_hw = self._pending[id(x)][1] if id(x) in self._pending else (1, 1)
        weights = layer.get_weights()
        if len(weights) != (2 if layer.use_bias else 1):
            raise DetsegError(
                f"cannot move the weights of Dense layer {layer.name!r}: expected kernel"
                f"{' and bias' if layer.use_bias else ''}, found {len(weights)} arrays "
                "(quantized or LoRA layers are not supported)"
            )
        in_channels = x.shape[-1]
        if kernel_hw[0] * kernel_hw[1] * in_channels != weights[0].shape[0]:
            raise DetsegError(
                f"cannot convert Dense layer {layer.name!r}: its kernel has {weights[0].shape[0]} "
                f"inputs, not {kernel_hw[0]} x {kernel_hw[1]} x {in_channels}"
            )
        weights[0] = weights[0].reshape(*kernel_hw, in_channels, layer.units)

        def make():
            return keras.layers.Conv2D(
                layer.units,
                kernel_hw,
                padding="valid",
                activation=layer.activation,
                use_bias=layer.use_bias,
                dtype=layer.dtype_policy,
                name=layer.name,
            )

        return self._apply(layer, make, x, weights=weights)

    def _apply(self, layer, factory, *args, weights=None, **kwargs):
        """Call the converted `layer` (made once by `factory`) on `args`; on its first call
        copy `weights` (default: the original layer's) into it."""
        fresh = id(layer) not in self._layers
        converted = self._cached(layer, factory)
        try:
            outputs = converted(*args, **kwargs)
        except (ValueError, TypeError) as error:
            raise DetsegError(
                f"cannot run layer {layer.name!r} ({type(layer).__name__}) on a variable-size "
                f"input: {error}"
            ) from error
        if fresh:
            try:
                converted.set_weights(layer.get_weights() if weights is None else weights)
            except ValueError as error:
                raise DetsegError(
                    f"cannot move the weights of layer {layer.name!r} ({type(layer).__name__}) "
                    f"to its convolutional copy: {error}"
                ) from error
        return outputs

    def _cached(self, layer, factory):
        if id(layer) not in self._layers:
            self._layers[id(layer)] = factory()
        return self._layers[id(layer)]


def _last_axis(layer, axis):
    """The axis argument of a per-vector layer, on the channel axis of a grid."""
    axes = axis if isinstance(axis, (list, tuple)) else [axis]
    if list(axes) not in ([1], [-1]):
        raise DetsegError(
            f"cannot convert layer {layer.name!r}: it acts on axis {axis!r}, not on the "
            "last axis of the flattened vectors"
        )
    return -1


def _shapes(tensors) -> str:
    return ", ".join(str(tuple(t.shape)) for t in keras.tree.flatten(tensors))


# === Geometry ===
def window_size(model: keras.Model) -> tuple[int, int]:
    """The window (H, W) in input pixels: a classifier's fixed input size, or the
    `window_size` a `to_fully_convolutional` model carries (lost in a `.keras` round trip)."""
    if getattr(model, "window_size", None) is not None:
        return tuple(int(v) for v in model.window_size)
    shape = tuple(model.input_shape) if not isinstance(model.input_shape, list) else ()
    if len(shape) != 4 or None in shape[1:3]:
        raise DetsegError(
            f"model {model.name!r} has no fixed input size (input shape {model.input_shape}) "
            "and carries no window_size: pass the classifier or its to_fully_convolutional copy"
        )
    return int(shape[1]), int(shape[2])


def grid_shape(fcn: keras.Model, height: int, width: int) -> tuple[int, int]:
    """The FCN's output grid (Gh, Gw) for an `height x width` input (symbolic: no compute)."""
    shape = fcn.compute_output_shape((1, height, width, fcn.input_shape[-1]))
    return int(shape[1]), int(shape[2])


def total_stride(fcn: keras.Model, window: tuple[int, int] | None = None) -> tuple[int, int]:
    """(stride_y, stride_x): input pixels between the windows of neighbouring grid cells.

    Measured on symbolic shapes (grid at `window` and at `window` + a large multiple of any
    usual stride), so it holds for any mix of strided convs and pools. `window` defaults to
    `window_size(fcn)`.
    """
    height, width = window_size(fcn) if window is None else window
    base = grid_shape(fcn, height, width)
    grown = grid_shape(fcn, height + _STRIDE_PROBE, width + _STRIDE_PROBE)
    strides = []
    for axis, (before, after) in enumerate(zip(base, grown, strict=True)):
        cells = after - before
        if cells <= 0 or _STRIDE_PROBE % cells:
            raise DetsegError(
                f"cannot measure the stride of {fcn.name!r} along axis {axis}: {before} cells "
                f"at the window size, {after} cells {_STRIDE_PROBE} px later"
            )
        strides.append(_STRIDE_PROBE // cells)
    return strides[0], strides[1]


# === Reference ===
def naive_sliding_windows(
    classifier: keras.Model, image: np.ndarray, stride: int | tuple[int, int], batch_size: int = 256
) -> np.ndarray:
    """The slow reference: crop every window and classify it -> probabilities [Gh, Gw, K].

    `image` [H, W, C] is what the classifier takes (pixels 0..255 for a detseg model); windows of the
    classifier's input size start at (i * stride_y, j * stride_x) and lie inside the image.
    """
    wh, ww = window_size(classifier)
    sy, sx = (stride, stride) if isinstance(stride, int) else stride
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3 or image.shape[0] < wh or image.shape[1] < ww or min(sy, sx) < 1:
        raise DetsegError(
            f"need an image [H, W, C] at least {wh}x{ww} and strides >= 1, got image shape "
            f"{image.shape} and stride {stride!r}"
        )
    rows = range(0, image.shape[0] - wh + 1, sy)
    cols = range(0, image.shape[1] - ww + 1, sx)
    crops = np.stack([image[y : y + wh, x : x + ww] for y in rows for x in cols])
    probs = np.concatenate(
        [
            keras.ops.convert_to_numpy(classifier(crops[i : i + batch_size], training=False))
            for i in range(0, len(crops), batch_size)
        ]
    )
    return probs.reshape(len(rows), len(cols), -1)


# === Detection ===
class SlidingWindowDetector:
    """Detect objects with a crop classifier run fully convolutionally over whole images.

    Args:
        classifier: a Model from fixed-size crops [B, h, w, C] to probabilities [B, K], trained
            on object crops and (with `background_class`) background crops. It gets the
            uint8 pixels as they are: every detseg classifier scales its own input.
        scales: image resize factors; each runs the FCN once (< 1 finds objects larger than
            the window). Scales at which the image is smaller than the window are skipped.
        score_thr: a cell whose best object-class probability exceeds this becomes a box.
        iou_thr, max_det: per-class NMS (`detseg.boxes.nms`) and detections kept per image.
        background_class: index of the background class among the K outputs, never reported;
            the other classes are renumbered 0..K-2 in order. None: every class is an object.

    `detector(images)` takes RGB uint8 images [H, W, 3] of any size >= the window and
    returns per image {"boxes" [N, 4] xyxy float32 original pixels (clipped to the image),
    "scores" [N] float32, "labels" [N] int32}, best first: the `Detector` contract, scored
    by `DetectionEvaluator`. Window (i, j) at a scale s is the box
    [j*sx, i*sy, j*sx + w, i*sy + h] / s.
    """

    def __init__(
        self,
        classifier: keras.Model,
        scales: Sequence[float] = (1.0,),
        score_thr: float = 0.5,
        iou_thr: float = 0.3,
        max_det: int = 100,
        background_class: int | None = None,
    ):
        num_classes = int(classifier.output_shape[-1])
        if not scales or any(not s > 0 for s in scales):
            raise DetsegError(
                f"scales must be a non-empty list of positive factors, got {scales!r}"
            )
        if not 0 <= score_thr < 1 or not 0 < iou_thr <= 1 or max_det < 1:
            raise DetsegError(
                "need 0 <= score_thr < 1, 0 < iou_thr <= 1 and max_det >= 1; got "
                f"score_thr={score_thr}, iou_thr={iou_thr}, max_det={max_det}"
            )
        if background_class is not None and not 0 <= background_class < num_classes:
            raise DetsegError(
                f"background_class must be in 0..{num_classes - 1}, got {background_class!r}"
            )
        self.fcn = to_fully_convolutional(classifier)
        self.window = window_size(classifier)
        self.stride = total_stride(self.fcn)
        self.scales = tuple(float(s) for s in scales)
        self.score_thr = float(score_thr)
        self.iou_thr = float(iou_thr)
        self.max_det = int(max_det)
        self.background_class = background_class
        self.object_classes = np.array(
            [c for c in range(num_classes) if c != background_class], dtype=np.int32
        )

    def score_grid(self, image: np.ndarray) -> np.ndarray:
        """Class probabilities [Gh, Gw, K] of the windows inside an RGB uint8 image [H, W, 3]
        (at scale 1): Gh = (H - h) // stride_y + 1, Gw likewise, as `naive_sliding_windows`."""
        self._check(image)
        if image.shape[0] < self.window[0] or image.shape[1] < self.window[1]:
            raise DetsegError(f"image {image.shape[:2]} is smaller than the {self.window} window")
        grid = np.asarray(self.fcn.predict_on_batch(image[None]))[0]
        # Same-padded nets give an extra row (column) of cells whose window runs past the
        # image edge; keep the windows that lie inside it, as the classifier was trained.
        rows = (image.shape[0] - self.window[0]) // self.stride[0] + 1
        cols = (image.shape[1] - self.window[1]) // self.stride[1] + 1
        return grid[:rows, :cols]

    def __call__(self, images: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        return [self._detect(self._check(image)) for image in images]

    def _detect(self, image: np.ndarray) -> dict[str, np.ndarray]:
        height, width = image.shape[:2]
        boxes, scores, labels = [], [], []
        for scale in self.scales:
            size = (round(width * scale), round(height * scale))
            if size[1] < self.window[0] or size[0] < self.window[1]:
                continue
            scaled = image
            if size != (width, height):
                interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
                # cv2.resize drops a single channel axis; put it back.
                scaled = cv2.resize(image, size, interpolation=interpolation).reshape(
                    size[1], size[0], image.shape[2]
                )
            found = self._cells_to_boxes(self.score_grid(scaled))
            # Back to original pixels with the exact per-axis factors of the resize.
            found[0] *= np.array([width / size[0], height / size[1]] * 2, dtype=np.float32)
            for part, values in zip((boxes, scores, labels), found, strict=True):
                part.append(values)
        if not boxes:
            return _no_detections()
        boxes = clip_boxes(np.concatenate(boxes), height, width)
        scores, labels = np.concatenate(scores), np.concatenate(labels)
        keep = nms(
            boxes,
            scores,
            self.iou_thr,
            labels=labels,
            score_thr=self.score_thr,
            max_det=self.max_det,
        )
        return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}

    def _cells_to_boxes(self, probs: np.ndarray) -> list[np.ndarray]:
        """Cells whose best object class beats `score_thr` -> [boxes, scores, labels] in
        the scaled image's pixels."""
        objects = probs[..., self.object_classes]
        labels = objects.argmax(axis=-1).astype(np.int32)
        scores = objects.max(axis=-1)
        rows, cols = np.nonzero(scores > self.score_thr)
        (sy, sx), (wh, ww) = self.stride, self.window
        x1, y1 = (cols * sx).astype(np.float32), (rows * sy).astype(np.float32)
        boxes = np.stack([x1, y1, x1 + ww, y1 + wh], axis=-1).reshape(-1, 4)
        return [boxes, scores[rows, cols].astype(np.float32), labels[rows, cols]]

    def _check(self, image: np.ndarray) -> np.ndarray:
        channels = self.fcn.input_shape[-1]
        if (
            not isinstance(image, np.ndarray)
            or image.dtype != np.uint8
            or image.shape[2:] != (channels,)
        ):
            got = getattr(image, "shape", type(image).__name__), getattr(image, "dtype", None)
            raise DetsegError(
                f"SlidingWindowDetector takes uint8 images [H, W, {channels}], "
                f"got shape/dtype {got}"
            )
        return image


def _no_detections() -> dict[str, np.ndarray]:
    return {
        "boxes": np.zeros((0, 4), np.float32),
        "scores": np.zeros(0, np.float32),
        "labels": np.zeros(0, np.int32),
    }
