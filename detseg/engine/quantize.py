"""Static int8 quantization of an exported ONNX graph for CPU inference (`export --int8`).

The convolutions, which hold nearly all of a detector's arithmetic, are quantized with
onnxruntime's own tooling: QDQ format, int8 weights per output channel, uint8 activations
whose ranges are calibrated on real images as the model serves them (letterboxed training
images). The prediction convolutions (those no other convolution depends on: a detector's
box / objectness / class outputs, a segmenter's logits) stay float32: their rounding lands
directly in the box coordinates and scores, and on the BCCD detector quantizing them cost 0.026
AP50 and 0.030 AP where keeping them float costs 0.002 and 0.001, for 0.6 ms of the 12.7 ms
graph (benchmarks/BENCHMARKS.md). Everything else (decode, NMS, the uint8 -> float input
scaling) stays float32 too, so the graph's inputs and outputs are unchanged and any runner of
the float export runs it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from detseg.data.images import letterbox, read_image
from detseg.data.sample import Dataset
from detseg.errors import DetsegError

__all__ = ["CALIBRATION_IMAGES", "QUANTIZED_OPS", "calibration_images", "prediction_convs", "quantize_onnx"]

CALIBRATION_IMAGES = 32
"""Images whose activations set the int8 ranges (more changed nothing measurable on BCCD)."""
QUANTIZED_OPS = ("Conv",)


def calibration_images(dataset: Dataset, side: int, count: int = CALIBRATION_IMAGES) -> np.ndarray:
    """`count` images of `dataset`, evenly spread over it, letterboxed to `side`: uint8 [N, S, S, 3]."""
    if not len(dataset):
        raise DetsegError("int8 calibration needs training images; the train split is empty")
    picks = np.unique(np.linspace(0, len(dataset) - 1, min(count, len(dataset))).round().astype(int))
    return np.stack([letterbox(read_image(dataset.samples[i].image_path), side)[0] for i in picks])


class _Batches:
    """onnxruntime's CalibrationDataReader protocol: one image per `get_next()`, then None."""

    def __init__(self, input_name: str, images: np.ndarray):
        self._feeds: Iterator[dict[str, np.ndarray]] = ({input_name: image[None]} for image in images)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def prediction_convs(graph) -> list[str]:
    """Names of the Conv nodes of an ONNX `graph` from which no other Conv is reachable: the
    layers whose outputs are the model's raw predictions (ONNX lists nodes in topological
    order, so one pass from the end settles every node)."""
    consumers: dict[str, list] = {}
    for node in graph.node:
        for tensor in node.input:
            consumers.setdefault(tensor, []).append(node)
    feeds_a_conv: dict[int, bool] = {}
    for node in reversed(graph.node):
        following = [c for out in node.output for c in consumers.get(out, [])]
        feeds_a_conv[id(node)] = any(c.op_type == "Conv" or feeds_a_conv[id(c)] for c in following)
    return [n.name for n in graph.node if n.op_type == "Conv" and not feeds_a_conv[id(n)]]


def quantize_onnx(float_path: Path, target: Path, images: np.ndarray) -> list[str]:
    """Write to `target` the int8 version of the ONNX graph `float_path`, calibrated on
    `images` (uint8 [N, S, S, C], letterboxed as the graph takes them); returns the names of
    the prediction convolutions left in float32."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    input_name = onnx.load(str(float_path), load_external_data=False).graph.input[0].name
    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        # Shape inference and graph clean-up that quantization expects beforehand.
        quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
        kept_float = prediction_convs(onnx.load(str(prepared), load_external_data=False).graph)
        quantize_static(
            prepared,
            target,
            _Batches(input_name, images),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANTIZED_OPS),
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=kept_float,
        )
    return kept_float
