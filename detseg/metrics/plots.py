"""Metric plots as PNG files. Figures are built with `matplotlib.figure.Figure` (rendered by
Agg on save), never pyplot, so no display is needed and the user's backend is untouched."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from detseg.atomic import replacing

_RECALL_POINTS = np.linspace(0.0, 1.0, 101)


def _file_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "class"


def sample_precision(recall: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Interpolated precision (the best precision at recall >= r) at 101 recall points."""
    envelope = np.maximum.accumulate(np.asarray(precision)[::-1])[::-1]
    index = np.searchsorted(recall, _RECALL_POINTS, side="left")
    valid = index < len(envelope)
    sampled = np.zeros(len(_RECALL_POINTS))
    sampled[valid] = envelope[index[valid]]
    return sampled


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Save a figure as PNG atomically (a killed run never leaves a half-written plot)."""
    path = Path(path)
    with replacing(path) as partial:
        fig.savefig(partial, dpi=100)
    return path


def plot_pr_curves(
    curves: dict[str, tuple[np.ndarray, np.ndarray]], out_dir: str | Path, title: str = ""
) -> list[Path]:
    """One precision-recall PNG per class (`pr_<class>.png`) and one with every class and
    their mean (`pr_all.png`); returns the paths written."""
    out_dir = Path(out_dir)
    paths = []
    for name, (recall, precision) in curves.items():
        fig = Figure(figsize=(5, 4))
        ax = fig.subplots()
        ax.plot(recall, precision, drawstyle="steps-post")
        _decorate(ax, f"{name} {title}".strip())
        paths.append(save_figure(fig, out_dir / f"pr_{_file_stem(name)}.png"))
    fig = Figure(figsize=(6, 5))
    ax = fig.subplots()
    for recall, precision in curves.values():
        ax.plot(recall, precision, linewidth=0.6, alpha=0.5, color="grey")
    if curves:
        mean = np.mean([sample_precision(r, p) for r, p in curves.values()], axis=0)
        ax.plot(_RECALL_POINTS, mean, linewidth=2.5, color="tab:blue",
                label=f"mean of {len(curves)} classes")
        ax.legend(loc="lower left")
    _decorate(ax, f"all classes {title}".strip())
    paths.append(save_figure(fig, out_dir / "pr_all.png"))
    return paths


def _decorate(ax, title: str) -> None:
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(title)
    ax.grid(alpha=0.3)


def plot_confusion_matrix(
    matrix: np.ndarray, class_names: list[str], path: str | Path, normalize: bool = True
) -> Path:
    """The detection confusion matrix (rows predicted, columns true, last = background) as
    a PNG; with `normalize`, each column is divided by its total (share of each true class)."""
    labels = [*class_names, "background"]
    values = matrix.astype(np.float64)
    if normalize:
        values = values / np.maximum(values.sum(axis=0, keepdims=True), 1)
    size = max(5.0, 0.35 * len(labels) + 2)
    fig = Figure(figsize=(size, size * 0.85))
    ax = fig.subplots()
    image = ax.imshow(values, cmap="Blues", vmin=0)
    fig.colorbar(image, ax=ax, fraction=0.046)
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlabel("true")
    ax.set_ylabel("predicted")
    if len(labels) <= 20:
        for (i, j), v in np.ndenumerate(values):
            if matrix[i, j]:
                ax.text(j, i, f"{v:.2f}" if normalize else str(matrix[i, j]),
                        ha="center", va="center", fontsize=7)
    fig.tight_layout()
    return save_figure(fig, Path(path))


# === Training curves ===

_CURVE_COLUMNS = 3


def curve_panels(columns: list[str]) -> list[str]:
    """The panels of `plot_training_curves` for history.csv's columns, in order: the total
    loss, each loss term, each validation metric, then the learning rate (`lr`)."""
    losses = sorted((c for c in columns if c.endswith("loss")), key=lambda c: (c != "loss", c))
    metrics = sorted(c for c in columns if c.startswith("val_"))
    return [*losses, *metrics, *(["lr"] if "lr" in columns else [])]


def plot_training_curves(rows: list[dict[str, str]], path: str | Path) -> Path:
    """One panel per `curve_panels` column of history.csv's `rows`, against the epoch (the
    run's story at a glance, like the loss and metric curves of other trainers); an epoch
    that did not log a value (validation every N epochs) is left out of that panel."""
    panels = curve_panels(list(rows[0]) if rows else [])
    grid_rows = max(1, -(-len(panels) // _CURVE_COLUMNS))
    fig = Figure(figsize=(4 * _CURVE_COLUMNS, 3 * grid_rows))
    axes = fig.subplots(grid_rows, _CURVE_COLUMNS, squeeze=False).ravel()
    for ax, name in zip(axes, panels, strict=False):
        logged = [(int(row["epoch"]) + 1, float(row[name])) for row in rows if row.get(name)]
        ax.plot(*zip(*logged, strict=True), marker="o", markersize=3)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    for ax in axes[len(panels):]:
        ax.set_axis_off()
    fig.tight_layout()
    return save_figure(fig, path)
