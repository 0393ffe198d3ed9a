"""What every job needs of a run folder: the model path, its config, the loaded model and its
task, the history of the epochs already trained, and the metadata beside an export. A leaf of the engine: it imports no
other engine module, so train, evaluate, predict and export all build on it."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
from pathlib import Path
from typing import Any

import keras

from detseg.atomic import replacing, write_text
from detseg.config import Config, load_config
from detseg.errors import DetsegError
from detseg.tasks import Task, task_for

__all__ = [
    "best_logged",
    "completed_epochs",
    "exported_format",
    "last_logged",
    "load_model",
    "load_run",
    "metadata_path",
    "missing_onnx_packages",
    "model_config",
    "read_history",
    "read_metadata",
    "resolve_model_path",
    "save_model",
    "write_history",
]

HISTORY_FILE = "history.csv"

ONNX_PACKAGES = ("onnx", "onnxruntime", "tf2onnx")
"""What exporting to ONNX (tf2onnx) and running the export (onnxruntime) import: the onnx extra."""

_METADATA_KEYS = ("format", "input_size", "class_names")


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


def model_config(model_path: Path, config: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """The config a model was trained with: `config` if given, else config.yaml beside the model."""
    cfg_path = Path(config) if config else model_path.parent / "config.yaml"
    if not cfg_path.is_file():
        raise DetsegError("no config.yaml beside the model; pass --config", cfg_path)
    return load_config(cfg_path, overrides)


UNSAFE_REFUSAL = (
    "refused to load: the model holds Python code (a Lambda layer) that would run on loading; "
    "pass --unsafe (unsafe=True) only if you trust where the file came from"
)


def load_model(
    model_path: Path, task: Task | None = None, *, unsafe: bool = False, names: list[str] | None = None
) -> keras.Model:
    """Load a `.keras` file in Keras safe mode, turning a corrupt or foreign file into a
    one-line error; with `task`, a model of another task is refused too, and with `names`
    (the config's classes) a model with another number of classes.

    Safe mode refuses files that carry Python bytecode (a `Lambda` layer's function): loading
    one would run code of the file's author. `unsafe=True` (the CLI's `--unsafe`) lifts that for
    a file the user trusts.
    """
    try:
        model = keras.saving.load_model(model_path, safe_mode=not unsafe)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        if "safe_mode=False" in str(exc):
            raise DetsegError(UNSAFE_REFUSAL, model_path) from None
        raise DetsegError(f"cannot load the model: {exc}".splitlines()[0], model_path) from None
    if task is not None:
        task.check_model(model, model_path, names)
    return model


def load_run(
    model: str | Path, config: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> tuple[Path, Config, Task]:
    """A run folder or `.keras` file -> (model path, its config, its task); the model itself
    is loaded later (`load_model`), after the cheap checks."""
    model_path = resolve_model_path(model)
    cfg = model_config(model_path, config, overrides)
    return model_path, cfg, task_for(cfg)


def save_model(model: keras.Model, path: Path) -> Path:
    """Save `model` (with its optimizer state) to `path` atomically: a save interrupted by a
    crash, Ctrl-C or a full disk leaves the previous file intact (`detseg.atomic`)."""
    with replacing(path) as partial:
        model.save(partial)
    return path


def read_history(run_dir: Path) -> list[dict[str, str]]:
    """The rows of a run's history.csv, one per completed epoch (none when absent)."""
    path = run_dir / HISTORY_FILE
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def completed_epochs(run_dir: Path) -> int:
    """Epochs already logged in a run's history.csv (0 when absent)."""
    return len(read_history(run_dir))


def write_history(run_dir: Path, rows: list[dict[str, Any]]) -> Path:
    """Write the epochs' logs as history.csv (atomically): `epoch` first, then every key logged
    in any epoch, sorted; a key an epoch did not log is left empty."""
    keys = sorted({key for row in rows for key in row} - {"epoch"})
    out = io.StringIO()
    writer = csv.DictWriter(out, ["epoch", *keys], restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return write_text(run_dir / HISTORY_FILE, out.getvalue())


def best_logged(run_dir: Path, key: str) -> float | None:
    """The best (highest) `key` logged in a run's history.csv, None when never logged."""
    values = [float(row[key]) for row in read_history(run_dir) if row.get(key)]
    return max(values) if values else None


def last_logged(run_dir: Path, key: str) -> float | None:
    """The last logged value of `key` (e.g. the training minutes spent), None when absent."""
    values = [float(row[key]) for row in read_history(run_dir) if row.get(key)]
    return values[-1] if values else None


# === Exported models ===


def missing_onnx_packages() -> list[str]:
    """The packages of `ONNX_PACKAGES` this environment lacks (checked without importing them)."""
    return [name for name in ONNX_PACKAGES if importlib.util.find_spec(name) is None]


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
    missing = [key for key in _METADATA_KEYS if not isinstance(metadata, dict) or key not in metadata]
    if missing:
        raise DetsegError(f"export metadata lacks {', '.join(missing)}", path)
    return metadata
