"""The Task: everything that differs between model kinds, as small hooks the engine calls.

The engine (`detseg.engine`) trains, evaluates, predicts and exports any model kind by
asking its Task: load the data, prepare the config (fit anchors, record class names), build
the model, make the training loader, compile it, score the validation split, write the
evaluation report, wrap the model for images and video, draw a gallery of validation
predictions, and build the serving graph of an export. The Keras model keeps its own loss (`compute_loss`) and decoding (`predict_step`).
A hook with a default here is one most tasks share; a new task overrides what differs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from detseg.backbones.pyramid import PIXELS_LAYER, scales_pixels
from detseg.config import Config
from detseg.data import letterbox_params, read_image
from detseg.data.images import resize_to_fit
from detseg.errors import DetsegError
from detseg.viz import draw_detections, titled_grid

if TYPE_CHECKING:
    import keras

    from detseg.stream import Predictor

__all__ = ["GALLERY_ROWS", "GALLERY_TITLES", "Report", "Task", "refuse_thresholds"]

GALLERY_ROWS = 4
"""Validation images (rows) in a training gallery (`Task.gallery`)."""
GALLERY_SIDE = 192
"""Pixels of the longer side of each image of a training gallery (drawn at that size)."""
GALLERY_TITLES = ("truth", "prediction")
"""The columns of a training gallery."""


@dataclass(frozen=True)
class Report:
    """An evaluation: the numbers (`metrics`, JSON-ready), the printed text and the files written."""

    metrics: dict[str, Any]
    text: str
    files: tuple[Path, ...] = ()


def refuse_thresholds(score_thr: float | None, iou_thr: float | None, reports: str, source: str | Path | None = None) -> None:
    """`--conf` / `--iou` are a detector's; a task without them refuses them in one line that
    says what it `reports` instead."""
    if score_thr is not None or iou_thr is not None:
        raise DetsegError(f"--conf and --iou are detection thresholds; {reports}", source)


class Task(ABC):
    """Hooks of one model kind (`model.kind`); see the module docstring.

    `monitor` is the validation metric that chooses `best.keras` (higher is better),
    `model_class` the Keras class its `.keras` files hold (a model of another task is refused),
    and `runs_on_onnxruntime` whether its exported predictor gives what its Keras predictor
    gives for every predict setting, so `detseg predict` may run a `.keras` model through its
    cached ONNX export (`predict.runtime`).
    """

    kind: ClassVar[str]
    monitor: ClassVar[str]
    model_class: ClassVar[type]
    runs_on_onnxruntime: ClassVar[bool] = False

    # === Data ===

    @abstractmethod
    def load_data(self, cfg: Config, split: str) -> Any:
        """The labelled data of `split` (a Dataset, crops, ...), as this task's loaders take it."""

    def class_names(self, data: Any) -> list[str]:
        """Class names of loaded data, in label order."""
        return list(data.class_names)

    def describe_data(self, data: Any, split: str) -> str:
        """A short summary of loaded data for the training log."""
        return f"{split} split:\n{data.summary_text()}"

    def check_val_data(self, cfg: Config, data: Any) -> None:
        """Fail early when the validation data cannot be scored against the training classes."""
        if self.class_names(data) != list(cfg.data.names or []):
            raise DetsegError(
                f"the val split's classes {self.class_names(data)} differ from the training "
                f"classes {cfg.data.names}"
            )

    # === Model and training ===

    def prepare(self, cfg: Config, train_data: Any) -> Config:
        """The config to save with the run: here the class names; tasks add what they fit."""
        names = self.class_names(train_data)
        return cfg.model_copy(update={"data": cfg.data.model_copy(update={"names": names})})

    @abstractmethod
    def build_model(self, cfg: Config, num_classes: int) -> keras.Model:
        """A new model for `cfg.model` with `num_classes` outputs."""

    @abstractmethod
    def train_loader(self, cfg: Config, model: keras.Model, train_data: Any) -> keras.utils.PyDataset:
        """The shuffled, augmented training batches (targets encoded for `model`)."""

    def compile(self, model: keras.Model, optimizer: keras.optimizers.Optimizer) -> None:
        """Compile for training; the loss is the model's own `compute_loss`."""
        model.compile(optimizer=optimizer)

    def backbone(self, model: keras.Model) -> keras.Model:
        """The pretrained-able trunk that `train.freeze_backbone_epochs` freezes."""
        return model.backbone

    @abstractmethod
    def validate(self, cfg: Config, model: keras.Model, val_data: Any) -> dict[str, float]:
        """Validation numbers for the epoch logs, `monitor` among them."""

    def after_training(self, cfg: Config, best: keras.Model, run_dir: Path) -> None:
        """Anything written once the best model is known (nothing by default)."""
        return None

    def gallery_examples(self, data: Any, count: int, side: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """The first `count` images of `data` (RGB uint8) and a copy of each with its truth drawn:
        here a detection Dataset's captioned boxes. With `side`, the images are first resized so
        that their longer side is `side` (the captions then keep their size in the gallery); a
        task whose prediction works in the image's own pixels (sliding windows, tiles) ignores it."""
        examples = []
        for sample in data.samples[:count]:
            image, boxes = read_image(sample.image_path), sample.boxes
            if side:
                params = letterbox_params(image.shape[1], image.shape[0], side)
                image, boxes = resize_to_fit(image, side), boxes * np.float32([params.scale_x, params.scale_y] * 2)
            examples.append((image, draw_detections(image, boxes, sample.labels, class_names=data.class_names)))
        return examples

    def gallery(self, cfg: Config, model: keras.Model, data: Any, count: int = GALLERY_ROWS) -> np.ndarray:
        """An RGB grid of the first `count` validation images: truth | `model`'s prediction, drawn
        by this task's predictor (the predict thresholds), one row per image (`titled_grid`)."""
        examples = self.gallery_examples(data, count, GALLERY_SIDE)
        predictor = self.predictor(cfg, model, score_thr=None, iou_thr=None, batch=len(examples))
        results = predictor([image for image, _ in examples])
        rows = [[truth, predictor.draw(image, result)] for (image, truth), result in zip(examples, results, strict=True)]
        return titled_grid(rows, GALLERY_TITLES, GALLERY_SIDE)

    # === Evaluation, prediction, export ===

    @abstractmethod
    def evaluate(self, cfg: Config, model: keras.Model, data: Any, out_dir: Path) -> Report:
        """Score `model` on `data`, write the report files into `out_dir`."""

    @abstractmethod
    def predictor(
        self, cfg: Config, model: keras.Model, *, score_thr: float | None, iou_thr: float | None, batch: int
    ) -> Predictor:
        """The model behind the stream runner's `Predictor` contract (infer, draw, record)."""

    @abstractmethod
    def serving_model(self, cfg: Config, model: keras.Model, fmt: str) -> tuple[keras.Model, dict[str, Any]]:
        """The export graph (uint8 letterboxed images [B, S, S, C] in, final outputs out) for
        format `fmt`, and what a runtime needs around it (output names, class names, ...)."""

    @abstractmethod
    def exported_predictor(
        self,
        runner: Callable[[np.ndarray], dict[str, np.ndarray]],
        metadata: dict[str, Any],
        path: Path,
        *,
        score_thr: float | None,
        iou_thr: float | None,
        batch: int,
    ) -> Predictor:
        """An exported artefact (its `runner`: uint8 letterboxed batch -> outputs by name, and
        the metadata written beside it) behind the stream runner's `Predictor` contract."""

    def predicted_classes(self, model: keras.Model) -> int:
        """How many classes `model` (this task's) tells apart, as many as its config names."""
        return int(model.num_classes)

    def saved_class_names(self, cfg: Config, model: keras.Model) -> list[str]:
        """Class names saved with a run (`data.names`), checked against what `model` predicts."""
        names = list(cfg.data.names or [])
        if len(names) != self.predicted_classes(model):
            raise DetsegError(
                f"the config names {len(names)} classes but the model predicts {self.predicted_classes(model)}"
            )
        return names

    def check_model(self, model: keras.Model, source: str | Path, names: list[str] | None = None) -> None:
        """Refuse a loaded model that this task cannot run: a `.keras` file of another task, one
        saved before models scaled their own pixels (it wants 0..1 input and would silently
        mispredict on the 0..255 pixels it now gets), or one whose classes are not the `names`
        of the config it is run with."""
        if not isinstance(model, self.model_class):
            raise DetsegError(
                f"this is a {type(model).__name__}, not a {self.model_class.__name__} "
                f"(model.kind {self.kind!r} in its config)",
                source,
            )
        if not scales_pixels(model):
            raise DetsegError(
                f"this model has no {PIXELS_LAYER!r} layer: it was saved by an older detseg that "
                "fed models 0..1 images and would mispredict on pixels 0..255; retrain it",
                source,
            )
        if names is not None and self.predicted_classes(model) != len(names):
            raise DetsegError(
                f"the model predicts {self.predicted_classes(model)} classes but its config "
                f"names {len(names)}: {names}",
                source,
            )
