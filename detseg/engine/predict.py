"""`detseg predict`: run a trained model of any task, or an export, on any source.

The source is opened (and `--show` checked) before the model loads, so a missing camera or a
headless OpenCV fails within seconds. The model's task wraps it as a stream `Predictor`
(infer, draw, record), and the threaded runner of `detseg.stream` does the rest: annotated
images or video (`--save`), a window (`--show`), one JSON line per frame (`--jsonl`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from detseg.engine.exported import exported_predictor, predict_exported
from detseg.engine.onnx_cache import cached_onnx, predict_runtime
from detseg.engine.runs import exported_format, load_model, load_run
from detseg.errors import DetsegError
from detseg.stream import StreamSummary, run_on_source

__all__ = ["predict"]


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
    overrides: dict[str, Any] | None = None,
    unsafe: bool = False,
) -> StreamSummary:
    """Run a model on an image, folder, glob, video, stream or webcam and write the outputs.

    `model` is a run folder, a `.keras` file, or an exported ONNX / TFLite / SavedModel
    artefact. A `.keras` detector runs on onnxruntime when `predict.runtime` allows it (its
    ONNX export made once and cached, `detseg.engine.onnx_cache`), else on Keras. `score_thr` and `iou_thr` override a detector's predict thresholds; `config`
    replaces the config.yaml beside the model, and `overrides` ({"predict.tile": True}) change
    it. `unsafe` loads a `.keras` model holding Python code (`runs.load_model`). Returns the
    run's `StreamSummary`.
    """
    if exported_format(model) is not None:  # an ONNX / TFLite / SavedModel export
        if overrides:
            raise DetsegError("config overrides (--set) apply to a run or .keras model, not to an export", model)
        return predict_exported(
            model, source=source, save=save, show=show, jsonl=jsonl, batch=batch,
            max_frames=max_frames, score_thr=score_thr, iou_thr=iou_thr, config=config,
        )  # fmt: skip
    model_path, cfg, task = load_run(model, config, overrides)
    if task.runs_on_onnxruntime and predict_runtime(cfg, model_path) == "onnxruntime":
        thresholds = {"score_thr": score_thr, "iou_thr": iou_thr}
        baked = cfg.model_copy(
            update={"predict": cfg.predict.model_copy(update={k: v for k, v in thresholds.items() if v is not None})}
        )

        def build():  # after the source opened: a missing camera fails before any export
            return exported_predictor(cached_onnx(model_path, baked, task, unsafe=unsafe), batch=batch)

    else:

        def build():
            model = load_model(model_path, task, unsafe=unsafe, names=cfg.data.names)
            return task.predictor(cfg, model, score_thr=score_thr, iou_thr=iou_thr, batch=max(1, batch))

    return run_on_source(
        build, source, save=save, show=show, jsonl=jsonl, batch=batch, max_frames=max_frames
    )
