"""Classification metrics: accuracy, top-k accuracy, per-class accuracy and the confusion
matrix (computed in NumPy from predicted probabilities), its printed table and its PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from detseg.metrics.plots import save_figure

__all__ = ["TOP_K", "classification_metrics", "format_classification", "plot_class_confusion"]

TOP_K = (1, 2, 3, 5)
"""Top-k accuracies reported (those with k below the number of classes; top-1 always)."""



def classification_metrics(probs: np.ndarray, labels: np.ndarray, class_names: list[str]) -> dict:
    """Accuracy, top-k accuracy, per-class accuracy (recall) and confusion matrix.

    `probs` [N, C] class scores, `labels` [N] int in 0..C-1. The confusion matrix has rows
    for the true class and columns for the predicted one; a class without images has
    per-class accuracy None.
    """
    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels, np.int64)
    c = len(class_names)
    if probs.ndim != 2 or probs.shape != (len(labels), c):
        raise ValueError(
            f"probs must be [N, {c}] for {len(labels)} labels, got shape {probs.shape}"
        )
    # Stable sort: on ties the lower class index ranks first, as argmax picks it.
    ranked = np.argsort(-probs, axis=1, kind="stable")
    predicted = ranked[:, 0] if len(labels) else labels
    top_k = {
        str(k): float(np.mean((ranked[:, :k] == labels[:, None]).any(axis=1)))
        for k in TOP_K
        if k == 1 or k < c
    }
    matrix = np.bincount(labels * c + predicted, minlength=c * c).reshape(c, c)
    totals = matrix.sum(axis=1)
    return {
        "accuracy": top_k["1"],
        "num_images": len(labels),
        "top_k": top_k,
        "per_class": {
            name: float(matrix[i, i] / totals[i]) if totals[i] else None
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": matrix.tolist(),
    }


def plot_class_confusion(matrix: np.ndarray, class_names: list[str], path: str | Path) -> Path:
    """The classification confusion matrix as a PNG: rows true, columns predicted; colour is
    the share of the true class, text the count."""
    matrix = np.asarray(matrix)
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    side = max(4.0, 0.4 * len(class_names) + 2)
    fig = Figure(figsize=(side, side * 0.85))
    ax = fig.subplots()
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of the true class")
    ax.set_xticks(range(len(class_names)), class_names, rotation=90, fontsize=8)
    ax.set_yticks(range(len(class_names)), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(class_names) <= 30:
        for (i, j), count in np.ndenumerate(matrix):
            color = "white" if shares[i, j] > 0.5 else "black"
            ax.text(j, i, str(count), ha="center", va="center", fontsize=7, color=color)
    fig.tight_layout()
    return save_figure(fig, path)


def format_classification(metrics: dict) -> str:
    """The printed report: overall and top-k accuracy, then one line per class."""
    overall = [f"accuracy {metrics['accuracy']:.3f}"]
    overall += [f"top-{k} {v:.3f}" for k, v in metrics["top_k"].items() if k != "1"]
    lines = ["  ".join(overall) + f"  ({metrics['num_images']} images)"]
    width = max([len(n) for n in metrics["per_class"]] + [5])
    lines.append(f"{'class':<{width}}  images  accuracy")
    for name, row in zip(metrics["per_class"], metrics["confusion_matrix"], strict=True):
        accuracy = metrics["per_class"][name]
        shown = "-" if accuracy is None else f"{accuracy:.3f}"
        lines.append(f"{name:<{width}}  {sum(row):>6}  {shown:>8}")
    return "\n".join(lines)
