"""Run exported models (ONNX, TFLite, SavedModel) of any task on RGB frames of any size.

An export (`detseg.engine.export`) takes letterboxed uint8 batches [B, S, S, C] and returns
the task's final outputs. `open_exported(path)` gives the artefact's runner and the metadata
written beside it (`<artefact>.json`: the task, class names, input side, the task's settings);
the task wraps the runner for the stream (`Task.exported_predictor`: letterbox the frames,
map the outputs back to the original pixels), so `detseg predict best.onnx` works like a
`.keras` model.

ONNX artefacts run on onnxruntime (the `onnx` extra) without TensorFlow; SavedModel and TFLite
artefacts run on TensorFlow's runtimes, which live in `export.py` with the other TF calls.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from detseg.engine.runs import exported_format, read_metadata
from detseg.errors import DetsegError
from detseg.stream import Predictor, StreamSummary, run_on_source
from detseg.tasks import TASKS

__all__ = ["OnnxRunner", "Runner", "exported_predictor", "open_exported", "predict_exported"]

Runner = Callable[[np.ndarray], dict[str, np.ndarray]]
"""uint8 letterboxed batch [B, S, S, C] -> the export's outputs by name."""

DEFAULT_TASK = "yolov3"  # exports written before metadata named their task were detectors


class OnnxRunner:
    """Runs an exported ONNX file on onnxruntime; outputs by name."""

    def __init__(self, path: Path):
        try:
            import onnxruntime
        except ImportError:
            raise DetsegError(
                "running ONNX models needs onnxruntime: pip install 'detseg[onnx]'"
            ) from None
        options = onnxruntime.SessionOptions()
        # Idle workers sleep instead of spinning: the video pipeline's capture and drawing
        # threads need those cores (spinning costs ~1.4x per frame on a busy 2-core CPU).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = onnxruntime.InferenceSession(
                str(path), options, providers=onnxruntime.get_available_providers()
            )
        except Exception as exc:  # onnxruntime raises its own untyped Fail/InvalidGraph errors
            raise DetsegError(f"cannot load the ONNX model: {exc}".splitlines()[0], path) from None
        self._input = self._session.get_inputs()[0].name
        self._outputs = [output.name for output in self._session.get_outputs()]

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        values = self._session.run(self._outputs, {self._input: images})
        return dict(zip(self._outputs, values, strict=True))


def open_exported(path: str | Path) -> tuple[Runner, dict[str, Any]]:
    """The runner of an exported artefact and its metadata (checked)."""
    path = Path(path)
    fmt = exported_format(path)
    if fmt is None:
        raise DetsegError("not an exported model (.onnx, .tflite or a SavedModel folder)", path)
    if not path.exists():
        raise DetsegError("exported model not found", path)
    metadata = read_metadata(path)
    if metadata.get("task", DEFAULT_TASK) not in TASKS:
        raise DetsegError(f"export of an unknown task {metadata.get('task')!r}", path)
    if fmt == "onnx":
        return OnnxRunner(path), metadata
    from detseg.engine.export import SavedModelRunner, TFLiteRunner

    return (SavedModelRunner(path) if fmt == "savedmodel" else TFLiteRunner(path)), metadata


def exported_predictor(
    path: str | Path, *, score_thr: float | None = None, iou_thr: float | None = None, batch: int = 1
) -> Predictor:
    """An exported artefact opened and wrapped by its task as the stream's `Predictor`."""
    runner, metadata = open_exported(path)
    task = TASKS[metadata.get("task", DEFAULT_TASK)]
    return task.exported_predictor(runner, metadata, Path(path), score_thr=score_thr, iou_thr=iou_thr, batch=max(1, batch))


def predict_exported(
    model: str | Path,
    *,
    source: str,
    save: str | None = None,
    show: bool = False,
    jsonl: str | None = None,
    batch: int = 1,
    max_frames: int | None = None,
    score_thr: float | None = None,
    iou_thr: float | None = None,
    config: str | None = None,
) -> StreamSummary:
    """`detseg predict` with an exported model: the same sources and outputs as a .keras model.

    Class names and settings come from the export's metadata, so `config` must be None.
    """
    if config is not None:
        raise DetsegError(
            "an exported model carries its class names and thresholds; --config is for .keras models"
        )

    def build():
        return exported_predictor(model, score_thr=score_thr, iou_thr=iou_thr, batch=batch)

    return run_on_source(
        build, source, save=save, show=show, jsonl=jsonl, batch=batch, max_frames=max_frames
    )
