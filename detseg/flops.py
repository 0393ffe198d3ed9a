"""The arithmetic of a Keras model: multiply-accumulates of its convolutions and dense layers.

Model sizes are compared across toolkits as GFLOPs = 2 x multiply-accumulates (MACs) of one
image, counting only convolutions and matrix products, as Ultralytics (through thop) and most
papers do; batch norms, activations and additions are a rounding error beside them.

The count runs the model once on one image and records the input and output shape of every
call of a convolution or dense layer, whatever nests it (functional sub-models, composite
layers such as `ResidualUnit` that call their own sub-layers), so a layer called twice is
counted twice.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import keras
import numpy as np
from keras import layers

__all__ = ["count_macs", "gflops"]

_TRANSPOSED = (layers.Conv1DTranspose, layers.Conv2DTranspose, layers.Conv3DTranspose)
_DEPTHWISE = (layers.DepthwiseConv1D, layers.DepthwiseConv2D)
_SEPARABLE = (layers.SeparableConv1D, layers.SeparableConv2D)
_COUNTED = (layers.Conv1D, layers.Conv2D, layers.Conv3D, *_TRANSPOSED, *_DEPTHWISE, *_SEPARABLE, layers.Dense)


def _macs(layer: keras.layers.Layer, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> int:
    """MACs of one call of `layer` on one image (shapes without the batch axis, channels last)."""
    if isinstance(layer, layers.Dense):
        return math.prod(out_shape[:-1]) * in_shape[-1] * out_shape[-1]
    kernel = math.prod(layer.kernel_size)
    cin, out_pixels = in_shape[-1], math.prod(out_shape[:-1])
    if isinstance(layer, _SEPARABLE):
        depth = cin * layer.depth_multiplier
        return out_pixels * depth * kernel + out_pixels * depth * out_shape[-1]
    if isinstance(layer, _DEPTHWISE):
        return out_pixels * cin * layer.depth_multiplier * kernel
    if isinstance(layer, _TRANSPOSED):  # every input pixel spreads a kernel over the output
        return math.prod(in_shape[:-1]) * kernel * cin * out_shape[-1]
    return out_pixels * kernel * (cin // layer.groups) * out_shape[-1]


@contextlib.contextmanager
def _recording(calls: list[int]) -> Iterator[None]:
    """Within the block, every call of a counted layer appends its MACs to `calls`."""
    originals = {cls: cls.__dict__.get("call") for cls in _COUNTED}  # None: inherited

    def recorder(original):
        def call(self, inputs, *args, **kwargs):
            outputs = original(self, inputs, *args, **kwargs)
            shapes = (tuple(inputs.shape), tuple(outputs.shape))
            calls.append(_macs(self, shapes[0][1:], shapes[1][1:]) * shapes[0][0])
            return outputs

        return call

    for cls in _COUNTED:
        cls.call = recorder(cls.call)
    try:
        yield
    finally:
        for cls, original in originals.items():
            if original is None:
                del cls.call
            else:
                cls.call = original


def count_macs(model: keras.Model, input_shape: tuple[int, ...] | None = None) -> int:
    """Multiply-accumulates of `model` on one image of `input_shape` (default: the model's
    own input shape, without the batch axis)."""
    shape = tuple(input_shape or model.input_shape[1:])
    if any(side is None for side in shape):
        raise ValueError(f"count_macs needs a fixed input shape; the model takes {model.input_shape}")
    calls: list[int] = []
    with _recording(calls):
        model(np.zeros((1, *shape), "float32"), training=False)
    return int(sum(calls))


def gflops(model: keras.Model, input_shape: tuple[int, ...] | None = None) -> float:
    """GFLOPs of one image, 2 x MACs / 1e9 (the figure Ultralytics and papers print)."""
    return 2 * count_macs(model, input_shape) / 1e9
