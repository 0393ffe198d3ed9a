"""Tasks: one per model kind, the hooks through which the engine trains, evaluates, predicts
and exports it (see `detseg.tasks.base.Task`).

`TASKS` is the only kind -> task table, as `BACKBONES` is for backbones; `task_for(cfg)`
picks the task of a config's `model.kind`.
"""

from __future__ import annotations

from detseg.config import Config
from detseg.tasks.base import Report, Task
from detseg.tasks.classify import ClassifyTask
from detseg.tasks.detect import DetectTask
from detseg.tasks.fcn import FCNTask
from detseg.tasks.localize import LocalizeTask
from detseg.tasks.segment import SegmentTask

__all__ = ["TASKS", "Report", "Task", "task_for"]

TASKS: dict[str, Task] = {
    "yolov3": DetectTask(),
    "classifier": ClassifyTask(),
    "unet": SegmentTask(),
    "localize": LocalizeTask(),
    "fcn": FCNTask(),
}


def task_for(cfg: Config) -> Task:
    """The task of `cfg.model.kind` (config validation guarantees it exists)."""
    return TASKS[cfg.model.kind]
