"""`.keras` detectors predicted on onnxruntime: exported once, cached beside the model.

On a CPU the exported ONNX graph (model + decode + NMS) runs faster on onnxruntime than the
Keras `Detector` does end to end (benchmarks/BENCHMARKS.md), so `detseg predict` uses it when
it can (`predict.runtime`). The export is keyed by the model file's bytes and everything
baked into the graph (class names, the model section, the predict thresholds):
`<model folder>/.cache/<model stem>-<key>.onnx` with its `.json` metadata. A retrained model
or changed thresholds give a new key; the stale exports of that model are removed. The
artefact is written under a temporary name and renamed, metadata last, so a run killed
mid-export never leaves a cache entry that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path

import keras

from detseg.config import Config
from detseg.engine.runs import load_model, metadata_path, missing_onnx_packages
from detseg.errors import DetsegError
from detseg.tasks import Task

__all__ = ["CACHE_DIR", "cached_onnx", "onnx_runtime_missing", "predict_runtime"]

log = logging.getLogger("detseg")

CACHE_DIR = ".cache"
_CHUNK = 1 << 20


def onnx_runtime_missing() -> str | None:
    """Why a `.keras` model cannot be run on onnxruntime here, or None when it can."""
    if keras.backend.backend() != "tensorflow":
        return f"the ONNX exporter needs the TensorFlow backend, not {keras.backend.backend()}"
    missing = missing_onnx_packages()
    if missing:
        return f"{', '.join(missing)} not installed (pip install 'detseg[onnx]')"
    return None


def predict_runtime(cfg: Config, model_path: Path) -> str:
    """"onnxruntime" or "keras": what `predict.runtime` asks for, resolved on this machine."""
    wanted = cfg.predict.runtime
    if wanted == "keras":
        return "keras"
    missing = onnx_runtime_missing()
    if missing is None:
        return "onnxruntime"
    if wanted == "onnxruntime":
        raise DetsegError(f"predict.runtime is onnxruntime but {missing}", model_path)
    return "keras"


def _cache_key(model_path: Path, cfg: Config) -> str:
    """Hex digest of the model file and of the config sections baked into the export."""
    digest = hashlib.sha256()
    with model_path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    baked = {
        "names": cfg.data.names,
        "model": cfg.model.model_dump(mode="json"),
        "predict": cfg.predict.model_dump(mode="json", exclude={"runtime"}),
    }
    digest.update(json.dumps(baked, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def cached_onnx(model_path: Path, cfg: Config, task: Task, *, unsafe: bool = False) -> Path:
    """The ONNX export of `model_path` under `cfg`, exported now unless already cached."""
    target = model_path.parent / CACHE_DIR / f"{model_path.stem}-{_cache_key(model_path, cfg)}.onnx"
    if target.is_file() and metadata_path(target).is_file():
        return target
    from detseg.engine.export import export_model  # TensorFlow: only when exporting

    log.info("exporting %s to ONNX once for onnxruntime (cached as %s)", model_path.name, target)
    trained = load_model(model_path, task, unsafe=unsafe, names=cfg.data.names)
    partial = target.with_name(f"{target.stem}.partial-{os.getpid()}.onnx")
    try:
        export_model(trained, cfg, task, "onnx", partial, source=model_path)
        os.replace(partial, target)
        os.replace(metadata_path(partial), metadata_path(target))
    finally:
        for leftover in (partial, metadata_path(partial)):
            leftover.unlink(missing_ok=True)
    entry = re.compile(rf"{re.escape(model_path.stem)}-[0-9a-f]{{16}}\.onnx(\.json)?")
    for stale in target.parent.iterdir():  # earlier exports of this model (retrained, other thresholds)
        if entry.fullmatch(stale.name) and stale.stem not in (target.stem, target.name):
            stale.unlink(missing_ok=True)
    return target
