"""Run exported detectors (ONNX, TFLite, SavedModel) on RGB frames of any size.

An export (`detseg.engine.export`) takes letterboxed uint8 batches [B, S, S, 3] and returns
padded final detections in input pixels. `ExportedDetector` puts the detseg side around it:
letterbox the frames, run the artefact, keep the `num` valid rows, map the boxes back to the
original pixels: the `Detector` contract that `run_stream` takes. Class names, the input side
and the thresholds baked into the graph come from the `<artefact>.json` written beside it.

ONNX artefacts run on onnxruntime (the `onnx` extra) without TensorFlow; SavedModel and TFLite
artefacts run on TensorFlow's runtimes, which live in `export.py` with the other TF calls.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from detseg.data.images import letterbox, unletterbox_boxes
from detseg.engine.video import StreamSummary, run_detector_on_source
from detseg.errors import DetsegError

__all__ = [
    "ExportedDetector",
    "OnnxRunner",
    "exported_format",
    "metadata_path",
    "predict_exported",
    "read_metadata",
]

Runner = Callable[[np.ndarray], dict[str, np.ndarray]]
"""uint8 letterboxed batch [B, S, S, 3] -> {"boxes" [B, D, 4], "scores", "labels", "num" [B]}."""

_METADATA_KEYS = ("format", "input_size", "class_names", "score_thr", "iou_thr", "max_det")


def exported_format(path: str | Path) -> str | None:
    """ "onnx", "tflite" or "savedmodel" when `path` names an exported artefact, else None.

    A SavedModel is a folder holding saved_model.pb (a run folder is not one).
    """
    path = Path(path)
    if path.suffix == ".onnx":
        return "onnx"
    if path.suffix == ".tflite":
        return "tflite"
    if (path / "saved_model.pb").is_file():
        return "savedmodel"
    return None


def metadata_path(artefact: str | Path) -> Path:
    """The JSON file beside an artefact: `best.onnx` -> `best.onnx.json`."""
    artefact = Path(artefact)
    return artefact.with_name(artefact.name + ".json")


def read_metadata(artefact: str | Path) -> dict[str, Any]:
    """The metadata `detseg export` wrote beside `artefact`, checked for the keys we use."""
    path = metadata_path(artefact)
    if not path.is_file():
        raise DetsegError("no metadata beside the exported model (detseg export writes it)", path)
    try:
        metadata = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DetsegError(f"cannot read the export metadata: {exc}".splitlines()[0], path) from None
    missing = [
        key for key in _METADATA_KEYS if not isinstance(metadata, dict) or key not in metadata
    ]
    if missing:
        raise DetsegError(f"export metadata lacks {', '.join(missing)}", path)
    return metadata


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


def _open_runner(path: Path, fmt: str) -> Runner:
    if not path.exists():
        raise DetsegError("exported model not found", path)
    if fmt == "onnx":
        return OnnxRunner(path)
    from detseg.engine.export import SavedModelRunner, TFLiteRunner

    return SavedModelRunner(path) if fmt == "savedmodel" else TFLiteRunner(path)


class ExportedDetector:
    """An exported detector behind the `Detector` contract: RGB uint8 images of any size in,
    per image {"boxes" [n, 4] xyxy original pixels, "scores" [n], "labels" [n] int32} out.

    The NMS thresholds are part of the graph. `score_thr` may raise the baked score threshold
    (detections at or below it are dropped on the host) but not lower it; `iou_thr` must equal
    the baked one (None: as exported).
    """

    def __init__(
        self,
        path: str | Path,
        score_thr: float | None = None,
        iou_thr: float | None = None,
        batch_size: int = 16,
    ):
        path = Path(path)
        fmt = exported_format(path)
        if fmt is None:
            raise DetsegError("not an exported model (.onnx, .tflite or a SavedModel folder)", path)
        self.metadata = read_metadata(path)
        baked_score, baked_iou = float(self.metadata["score_thr"]), float(self.metadata["iou_thr"])
        if score_thr is not None and score_thr < baked_score:
            raise DetsegError(
                f"this export keeps scores above {baked_score}; {score_thr} needs a new export "
                f"from a config with predict.score_thr <= {score_thr}",
                path,
            )
        if iou_thr is not None and iou_thr != baked_iou:
            raise DetsegError(
                f"this export's NMS IoU threshold is fixed at {baked_iou}; {iou_thr} needs a new export",
                path,
            )
        if batch_size < 1:
            raise DetsegError(f"batch_size must be >= 1, got {batch_size}")
        self.score_thr = baked_score if score_thr is None else float(score_thr)
        self.input_size = int(self.metadata["input_size"])
        self.class_names = list(self.metadata["class_names"])
        self.batch_size = batch_size
        self._runner = _open_runner(path, fmt)

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """The artefact's own padded outputs for a letterboxed uint8 batch [B, S, S, 3]."""
        return self._runner(batch)

    def __call__(self, images: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        results = []
        for start in range(0, len(images), self.batch_size):
            boxed = [
                letterbox(image, self.input_size)
                for image in images[start : start + self.batch_size]
            ]
            out = self.run(np.stack([image for image, _ in boxed]))
            for i, (_, params) in enumerate(boxed):
                n = int(out["num"][i])
                keep = out["scores"][i, :n] > self.score_thr
                results.append(
                    {
                        "boxes": unletterbox_boxes(out["boxes"][i, :n][keep], params),
                        "scores": out["scores"][i, :n][keep].astype(np.float32),
                        "labels": out["labels"][i, :n][keep].astype(np.int32),
                    }
                )
        return results


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

    Class names and thresholds come from the export's metadata, so `config` must be None.
    """
    if config is not None:
        raise DetsegError(
            "an exported model carries its class names and thresholds; --config is for .keras models"
        )

    def build() -> tuple[ExportedDetector, list[str]]:
        detector = ExportedDetector(model, score_thr=score_thr, iou_thr=iou_thr, batch_size=max(1, batch))
        return detector, detector.class_names

    return run_detector_on_source(
        build, source, save=save, show=show, jsonl=jsonl, batch=batch, max_frames=max_frames
    )
