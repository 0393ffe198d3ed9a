"""Text summaries of a metrics dict: the 12 COCO lines worded exactly as pycocotools prints
them, then a per-class table; or a VOC per-class table."""

from __future__ import annotations

from detseg.metrics.coco_eval import SUMMARY

_COCO_LINE = " {:<18} {} @[ IoU={:<9} | area={:>6s} | maxDets={:>3d} ] = {:0.3f}"
_VOC_TITLES = {"voc07": "VOC2007 11-point AP", "voc12": "VOC2010+ all-point AP"}


def _value(v: float) -> str:
    """A metric for a table; -1 (no ground truth, as pycocotools writes it) shows as n/a."""
    return f"{v:0.3f}" if v > -1 else "  n/a"


def format_coco_summary(result: dict) -> str:
    """The pycocotools summary (same wording and layout) followed by AP / AP50 per class."""
    lines = []
    for (_, is_ap, iou_thr, area, max_dets), value in zip(
        SUMMARY, result["stats"], strict=True
    ):
        iou = "0.50:0.95" if iou_thr is None else f"{iou_thr:0.2f}"
        title = "Average Precision" if is_ap else "Average Recall"
        kind = "(AP)" if is_ap else "(AR)"
        lines.append(_COCO_LINE.format(title, kind, iou, area, max_dets, value))
    lines.append(_class_table(result["per_class"], ("AP", "AP50")))
    return "\n".join(lines)


def format_voc_summary(result: dict) -> str:
    """A per-class AP table under a title naming the protocol and IoU threshold."""
    title = f"{_VOC_TITLES[result['protocol']]} @ IoU > {result['iou_thr']:0.2f}"
    if "iou_type" in result:
        title += f" ({result['iou_type']})"
    per_class = {name: {"AP": ap} for name, ap in result["per_class"].items()}
    return "\n".join([title, _class_table(per_class, ("AP",)), f" {'mAP':<24} {result['mAP']:0.3f}"])


def format_summary(result: dict) -> str:
    """`format_coco_summary` or `format_voc_summary`, by the result's protocol."""
    return format_coco_summary(result) if result["protocol"] == "coco" else format_voc_summary(result)


def _class_table(per_class: dict, columns: tuple[str, ...]) -> str:
    width = max([24, *(len(name) for name in per_class)])
    header = f" {'class':<{width}}" + "".join(f" {c:>6}" for c in columns)
    rows = [
        f" {name:<{width}}" + "".join(f" {_value(values[c]):>6}" for c in columns)
        for name, values in per_class.items()
    ]
    return "\n".join([header, *rows])
