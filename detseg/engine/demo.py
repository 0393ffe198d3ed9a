"""`detseg demo`: the main job end to end on the built-in shapes data.

Generate the shapes set (and its moving-shapes video), train the tiny CPU detector, then run
it on the validation images and on the video, and say where every output went.
"""

from __future__ import annotations

from pathlib import Path

from detseg.config import load_config
from detseg.data.shapes import generate_shapes
from detseg.engine.predict import predict
from detseg.engine.train import train
from detseg.errors import DetsegError

DEFAULT_CONFIG = Path("configs/shapes_yolov3_tiny.yaml")


def run_demo(config: str | Path = DEFAULT_CONFIG, overrides: dict | None = None) -> Path:
    """Train, evaluate and predict with a shapes config; returns the run folder."""
    cfg = load_config(config, overrides)
    if cfg.data.builtin != "shapes" or not cfg.data.shapes.video_frames:
        raise DetsegError("the demo needs a config with data.builtin: shapes and data.shapes.video_frames > 0", config)
    shapes = generate_shapes(cfg.data.shapes, cfg.data.cache_dir)
    run_dir = train(cfg)  # prints the validation COCO table and writes metrics.json
    images_out = run_dir / "predictions"
    predict(run_dir, source=str(shapes / "val" / "images"), save=str(images_out))
    video_out = run_dir / "video_predictions.mp4"
    jsonl_out = run_dir / "video_predictions.jsonl"
    predict(run_dir, source=str(shapes / "video.mp4"), save=str(video_out), jsonl=str(jsonl_out))
    print(
        "\n".join(
            [
                f"dataset:            {shapes}",
                f"run folder:         {run_dir}",
                f"best model:         {run_dir / 'best.keras'}",
                f"metrics (COCO/VOC): {run_dir / 'metrics.json'}, {run_dir / 'metrics_voc.json'}",
                f"annotated images:   {images_out}",
                f"annotated video:    {video_out} (+ {jsonl_out.name})",
            ]
        )
    )
    return run_dir
