"""Deployable exports of a trained model of any task: SavedModel, TFLite and ONNX.

`export(model, fmt)` asks the model's task for its serving graph (`Task.serving_model`):
uint8 RGB images [B, S, S, C], already letterboxed to the model's input side S, in; the
task's final outputs out, post-processing inside (a detector's decode + NMS with the predict
thresholds baked in, a classifier's probabilities, ...). The SavedModel serves it as its
`serve` / `serving_default` signature; the TFLite file takes one image per call
([1, S, S, C]); ONNX goes through tf2onnx. Beside each artefact a `<artefact>.json` holds
what a runtime needs around the graph: the task, class names, input side, output names and
the task's own settings (`detseg.engine.exported` reads it back).

Export code is where DESIGN.md allows TensorFlow calls; this module also holds the
TensorFlow runtimes of SavedModel and TFLite artefacts.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import warnings
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from detseg.config import Config
from detseg.data.files import write_json
from detseg.data.images import PAD_VALUE
from detseg.data.splits import load_split
from detseg.engine.quantize import QUANTIZED_OPS, calibration_images, quantize_onnx
from detseg.engine.runs import load_model, load_run, metadata_path, missing_onnx_packages
from detseg.errors import DetsegError
from detseg.tasks import Task

__all__ = ["EXPORT_FORMATS", "SavedModelRunner", "TFLiteRunner", "export", "export_model"]

EXPORT_FORMATS = ("savedmodel", "tflite", "onnx")
ONNX_OPSET = 17  # NonMaxSuppression needs >= 11; tf2onnx converts combined NMS from 12
_SUFFIXES = {"savedmodel": "_saved_model", "tflite": ".tflite", "onnx": ".onnx"}


# === Export ===


def _output_path(model_path: Path, fmt: str, out: str | Path | None, int8: bool = False) -> Path:
    if out is None:
        return model_path.with_name(model_path.stem + ("_int8" if int8 else "") + _SUFFIXES[fmt])
    out = Path(out)
    if fmt != "savedmodel" and out.suffix != _SUFFIXES[fmt]:
        raise DetsegError(
            f"{fmt} exports are {_SUFFIXES[fmt]} files; got {out.suffix or 'no extension'!r}", out
        )
    if fmt == "savedmodel" and out.suffix in (".onnx", ".tflite", ".keras"):
        raise DetsegError(f"a SavedModel is a folder; {out.suffix!r} names another format", out)
    return out


def _prepare_target(target: Path) -> None:
    """Make the parent folder; an existing SavedModel is replaced, any other folder is refused."""
    if target.is_dir():
        if not (target / "saved_model.pb").is_file():
            raise DetsegError("exists and is not a SavedModel; choose another --out", target)
        shutil.rmtree(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DetsegError(
            f"cannot create the output folder: {exc.strerror}", target.parent
        ) from None


def _check_onnx_packages() -> None:
    missing = missing_onnx_packages()
    if missing:
        raise DetsegError(f"ONNX export needs {', '.join(missing)}: pip install 'detseg[onnx]'")


@contextlib.contextmanager
def _quiet_converters():
    """Hide the converters' progress chatter (TF's "Assets written", tf2onnx's optimiser log)
    and Keras's numpy-2 patch warning for tf2onnx; warnings and errors still show."""
    loggers = [logging.getLogger(name) for name in ("tensorflow", "tf2onnx")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(logger.level, logging.WARNING))
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*np.object.*")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def export(
    model: str | Path,
    fmt: str = "savedmodel",
    out: str | Path | None = None,
    *,
    config: str | Path | None = None,
    unsafe: bool = False,
    int8: bool = False,
) -> Path:
    """Export a trained model (a `.keras` file or a run folder) with its post-processing inside.

    `fmt` is "savedmodel" (a folder), "tflite" or "onnx"; `out` defaults to the model's path
    with `_saved_model`, `.tflite` or `.onnx` (`_int8.onnx` with `int8`). Class names and the
    task's settings come from `config` (default: config.yaml beside the model). Writes the
    artefact and its `<artefact>.json` metadata; returns the artefact's path. `unsafe` loads a
    model holding Python code (`runs.load_model`). `int8` (ONNX only) quantizes the
    convolutions to int8, calibrated on the config's training images (`detseg.engine.quantize`).
    """
    if fmt not in EXPORT_FORMATS:
        raise DetsegError(
            f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}"
        )
    if keras.backend.backend() != "tensorflow":
        raise DetsegError(
            f"exports need the TensorFlow backend, not {keras.backend.backend()}: run it with "
            "KERAS_BACKEND=tensorflow (a .keras model trained under any backend exports there)"
        )
    if int8 and fmt != "onnx":
        raise DetsegError(f"int8 quantization is for ONNX exports (--format onnx), not {fmt}")
    model_path, cfg, task = load_run(model, config)
    if fmt == "onnx":
        _check_onnx_packages()
    target = _output_path(model_path, fmt, out, int8)
    trained = load_model(model_path, task, unsafe=unsafe, names=cfg.data.names)
    calibration = None
    if int8:
        calibration = calibration_images(load_split(cfg.data, "train"), cfg.model.input_size)
    return export_model(trained, cfg, task, fmt, target, source=model_path, calibration=calibration)


def export_model(
    trained: keras.Model,
    cfg: Config,
    task: Task,
    fmt: str,
    target: Path,
    *,
    source: Path,
    calibration: np.ndarray | None = None,
) -> Path:
    """Write the artefact of a loaded model (its task's serving graph) to `target`, with its
    `<artefact>.json` metadata; `source` is the model file it came from. With `calibration`
    images (uint8 [N, S, S, C]), an ONNX graph's convolutions are quantized to int8."""
    serving, task_metadata = task.serving_model(cfg, trained, fmt)
    size, channels = cfg.model.input_size, int(trained.input_shape[-1])
    serving(np.zeros((1, size, size, channels), np.uint8))  # build it (Keras exports need a called model)
    batch = 1 if fmt == "tflite" else None
    signature = [tf.TensorSpec([batch, size, size, channels], tf.uint8, name="images")]

    _prepare_target(target)
    keras_format = {"savedmodel": "tf_saved_model", "tflite": "litert", "onnx": "onnx"}[fmt]
    options = {"opset_version": ONNX_OPSET} if fmt == "onnx" else {}
    kept_float: list[str] = []
    with tempfile.TemporaryDirectory() as scratch:
        graph = target if calibration is None else Path(scratch) / "float.onnx"
        with _quiet_converters():
            serving.export(
                str(graph), format=keras_format, input_signature=signature, verbose=False, **options
            )
        if calibration is not None:
            kept_float = quantize_onnx(graph, target, calibration)
    metadata = {
        "format": fmt,
        "task": task.kind,
        "input": {
            "name": "images",
            "dtype": "uint8",
            "shape": [batch, size, size, channels],
            "layout": "RGB, letterboxed: resized keeping the aspect ratio, centred, padded",
            "pad_value": PAD_VALUE,
        },
        "input_size": size,
        **task_metadata,
        "model": source.name,
    }
    if calibration is not None:
        metadata["int8"] = {
            "ops": list(QUANTIZED_OPS),
            "calibration_images": len(calibration),
            "float_convs": kept_float,
        }
    write_json(metadata, metadata_path(target), indent=2)
    return target


# === TensorFlow runtimes ===


class SavedModelRunner:
    """Runs an exported SavedModel's serving signature: uint8 [B, S, S, 3] -> dict of arrays."""

    def __init__(self, path: Path):
        self._serve = tf.saved_model.load(str(path)).signatures["serving_default"]

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        outputs = self._serve(tf.constant(images))
        return {name: np.asarray(value) for name, value in outputs.items()}


class TFLiteRunner:
    """Runs an exported TFLite file's signature, one image per call (its batch is 1)."""

    def __init__(self, path: Path):
        with warnings.catch_warnings():  # tf.lite.Interpreter warns that LiteRT replaces it
            warnings.simplefilter("ignore")
            interpreter = tf.lite.Interpreter(model_path=str(path))
        self._run = interpreter.get_signature_runner()

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        per_image = [self._run(images=image[None]) for image in images]
        return {name: np.concatenate([out[name] for out in per_image]) for name in per_image[0]}
