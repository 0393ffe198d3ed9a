"""`detseg predict`: load a trained detector with its config and run it on any source."""

from __future__ import annotations

from pathlib import Path

import keras

from detseg.config import Config, load_config
from detseg.engine.exported import exported_format, predict_exported
from detseg.engine.video import StreamSummary, run_detector_on_source
from detseg.errors import DetsegError
from detseg.heads import Detector


def resolve_model_path(model: str | Path) -> Path:
    """A run folder means its best.keras; anything else must be an existing .keras file."""
    path = Path(model)
    if path.is_dir():
        path = path / "best.keras"
    if not path.is_file():
        raise DetsegError("model file not found (give a run folder or a .keras file)", path)
    if path.suffix != ".keras":
        raise DetsegError(f"expected a .keras model file, got {path.suffix or 'no extension'!r}", path)
    return path


def model_config(model_path: Path, config: str | Path | None = None, overrides=None) -> Config:
    """The config a model was trained with: `config` if given, else config.yaml beside the model."""
    cfg_path = Path(config) if config else model_path.parent / "config.yaml"
    if not cfg_path.is_file():
        raise DetsegError("no config.yaml beside the model; pass --config", cfg_path)
    return load_config(cfg_path, overrides)


def load_model(model_path: Path) -> keras.Model:
    """Load a `.keras` file, turning a corrupt or foreign file into a one-line error."""
    try:
        return keras.saving.load_model(model_path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DetsegError(f"cannot load the model: {exc}".splitlines()[0], model_path) from None


def class_names_of(cfg: Config, num_classes: int) -> list[str]:
    """Class names saved with a run (data.names), checked against the model's outputs."""
    names = list(cfg.data.names or [])
    if len(names) != num_classes:
        raise DetsegError(f"the config names {len(names)} classes but the model predicts {num_classes}")
    return names


def predict(
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
) -> StreamSummary | list[dict]:
    """Detect objects on an image, folder, glob, video, stream or webcam and write the outputs.

    The source is opened (and `--show` checked) before the model loads, so a missing camera
    or a headless OpenCV fails within seconds. `model` may also be an exported ONNX / TFLite /
    SavedModel artefact (`detseg.engine.exported`). A classifier prints and returns its top-k
    labels per image instead of a stream summary.
    """
    if exported_format(model) is not None:  # an ONNX / TFLite / SavedModel export
        return predict_exported(
            model, source=source, save=save, show=show, jsonl=jsonl, batch=batch,
            max_frames=max_frames, score_thr=score_thr, iou_thr=iou_thr, config=config,
        )  # fmt: skip
    model_path = resolve_model_path(model)
    cfg = model_config(model_path, config)
    if cfg.model.kind == "classifier":  # prints the top-k labels of each image
        if save or show or jsonl:
            raise DetsegError("--save, --show and --jsonl are for detectors; a classifier prints its top-k labels")
        from detseg.engine.classify import predict_classifier

        return predict_classifier(model_path, cfg, source)

    def build() -> tuple[Detector, list[str]]:
        detector_model = load_model(model_path)
        detector = Detector(
            detector_model,
            score_thr=cfg.predict.score_thr if score_thr is None else score_thr,
            iou_thr=cfg.predict.iou_thr if iou_thr is None else iou_thr,
            max_det=cfg.predict.max_det,
            agnostic=cfg.predict.agnostic_nms,
            batch_size=max(1, batch),
        )
        return detector, class_names_of(cfg, detector_model.num_classes)

    return run_detector_on_source(
        build, source, save=save, show=show, jsonl=jsonl, batch=batch, max_frames=max_frames
    )
