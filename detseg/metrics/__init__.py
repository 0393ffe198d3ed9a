"""detseg.metrics: detection (COCO / VOC), classification and segmentation metrics, and a Keras callback
that logs them during training. All metric code is NumPy, outside the graph."""

from detseg.metrics.classification import (
    TOP_K,
    classification_metrics,
    format_classification,
    plot_class_confusion,
)
from detseg.metrics.coco_eval import CocoEvaluation, evaluate_coco
from detseg.metrics.confusion import detection_confusion_matrix
from detseg.metrics.detection import (
    PAD_LABEL,
    PROTOCOLS,
    DetectionEvaluator,
    evaluate_coco_files,
)
from detseg.metrics.plots import (
    curve_panels,
    plot_confusion_matrix,
    plot_pr_curves,
    plot_training_curves,
)
from detseg.metrics.segmentation import SegmentationMetrics
from detseg.metrics.summary import format_coco_summary, format_summary, format_voc_summary
from detseg.metrics.voc_eval import VocEvaluation, evaluate_voc, voc_ap


def __getattr__(name: str):
    """`EvaluateCallback` is loaded on first use: it needs Keras and its backend, which the
    metrics themselves do not, so `detseg evaluate --gt --dt` starts without TensorFlow."""
    if name == "EvaluateCallback":
        from detseg.metrics.callback import EvaluateCallback

        return EvaluateCallback
    raise AttributeError(f"module 'detseg.metrics' has no attribute {name!r}")


__all__ = [
    "curve_panels",
    "PAD_LABEL",
    "TOP_K",
    "PROTOCOLS",
    "CocoEvaluation",
    "DetectionEvaluator",
    "EvaluateCallback",
    "SegmentationMetrics",
    "VocEvaluation",
    "classification_metrics",
    "detection_confusion_matrix",
    "evaluate_coco",
    "evaluate_coco_files",
    "evaluate_voc",
    "format_classification",
    "format_coco_summary",
    "format_summary",
    "format_voc_summary",
    "plot_class_confusion",
    "plot_confusion_matrix",
    "plot_pr_curves",
    "plot_training_curves",
    "voc_ap",
]
