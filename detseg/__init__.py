"""detseg: object detection and segmentation on Keras 3.

The public API, re-exported here by hand. Names that need Keras load on first use (PEP 562),
so `import detseg` stays light and does not start the backend.
"""

from importlib import import_module
from typing import Any

from detseg.config import Config, dump_config, load_config
from detseg.errors import DetsegError

__version__ = "0.1.0"

_LAZY = {
    "train": "detseg.engine.train",
    "evaluate_model": "detseg.engine.evaluate",
    "evaluate_results_file": "detseg.engine.evaluate",
    "predict": "detseg.engine.predict",
    "export": "detseg.engine.export",
    "build_classifier": "detseg.heads.classifier",
    "build_yolo": "detseg.heads.yolo",
    "Detector": "detseg.heads.yolo_infer",
    "get_backbone": "detseg.backbones",
    "DetectionEvaluator": "detseg.metrics.detection",
}

__all__ = ["Config", "DetsegError", "__version__", "dump_config", "load_config", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'detseg' has no attribute {name!r}")
