"""Typed run configuration: YAML -> frozen pydantic models, one per section.

Every field has a default and a description, which is where each default is documented.
Unknown keys fail with the file, the key path and the closest valid key; wrong types name the
expected type. `load_config(path, overrides)` applies dotted overrides (`{"train.epochs": 3}`)
before validation, and `dump_config` writes YAML that loads back to an equal object.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from detseg.atomic import write_text
from detseg.errors import DetsegError

__all__ = [
    "AugmentConfig",
    "Config",
    "DataConfig",
    "EvalConfig",
    "MODEL_KINDS",
    "ClassifierModelConfig",
    "DetectorModelConfig",
    "FCNModelConfig",
    "LocalizerModelConfig",
    "ModelConfig",
    "SegmenterModelConfig",
    "UNetConfig",
    "PredictConfig",
    "ShapesConfig",
    "SplitConfig",
    "TrainConfig",
    "YoloConfig",
    "dump_config",
    "load_config",
    "parse_override",
    "set_config_value",
]


class _Section(BaseModel):
    """Base of every section: immutable, and unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# === Data ===


class ShapesConfig(_Section):
    """Parameters of the built-in generated shapes dataset (`data.builtin: shapes`).

    Circles, squares and triangles on noisy or textured backgrounds, generated once into
    `<data.cache_dir>/shapes_<hash of these fields>/` and reused.
    """

    num_train: int = Field(800, ge=1, description="Number of generated training images.")
    num_val: int = Field(100, ge=1, description="Number of generated validation images.")
    num_test: int = Field(0, ge=0, description="Number of generated test images (0: no test split).")
    image_size: int = Field(320, ge=32, description="Side of the square generated images, in pixels.")
    min_objects: int = Field(0, ge=0, description="Fewest shapes drawn on one image.")
    max_objects: int = Field(8, ge=0, description="Most shapes drawn on one image (fewer when they do not fit).")
    min_size: int = Field(16, ge=12, description="Smallest shape size (bounding-box side), in pixels.")
    max_size: int = Field(96, ge=12, description="Largest shape size (bounding-box side), in pixels.")
    seed: int = Field(0, ge=0, description="Seed of the generator: the same seed gives the same images.")
    video_frames: int = Field(
        0, ge=0, description="Frames of the moving-shapes MP4 (video.mp4 + video_boxes.json) to write (0: none)."
    )

    @field_validator("max_objects", "max_size")
    @classmethod
    def _max_not_below_min(cls, value: int, info) -> int:
        low = info.data.get(info.field_name.replace("max_", "min_"))
        if low is not None and value < low:
            raise ValueError(f"must be >= {info.field_name.replace('max_', 'min_')} ({low})")
        return value


class SplitConfig(_Section):
    """Where one split's annotations and images are. Relative paths resolve against `data.root`."""

    annotations: str | None = Field(
        None,
        description=(
            "Annotation file or folder (COCO/VIA JSON, VOC devkit root or XML folder, YOLO labels folder, "
            "mask folder, imagefolder root)."
        ),
    )
    images: str | None = Field(
        None, description="Image folder of this split (default: the devkit's JPEGImages/ or the JSON's folder)."
    )
    split: str | None = Field(
        None, description="Split name inside a devkit layout (VOC `ImageSets/Main/<split>.txt`)."
    )
    subset: str | None = Field(
        None,
        description="Python slice of the loaded samples, e.g. ':24' (first 24) or '24:' (the rest): a hold-out split.",
    )

    @field_validator("subset")
    @classmethod
    def _is_slice(cls, value: str | None) -> str | None:
        parts = value.split(":") if value is not None else ["", ""]
        if len(parts) not in (2, 3) or not all(p.strip().lstrip("-").isdigit() or not p.strip() for p in parts):
            raise ValueError("must be a slice like ':24', '24:' or '0:100:2'")
        return value


class DataConfig(_Section):
    """The dataset: a built-in generator or files in one of the supported annotation formats."""

    builtin: Literal["shapes"] | None = Field(
        None, description="Use a built-in generated dataset instead of files ('shapes')."
    )
    shapes: ShapesConfig = Field(default_factory=ShapesConfig, description="Shapes generator parameters.")
    format: Literal["coco", "voc", "yolo", "via", "masks", "imagefolder"] = Field(
        "coco", description="Annotation format of the files."
    )
    root: str | None = Field(None, description="Dataset root; relative split paths resolve against it.")
    train: SplitConfig = Field(default_factory=SplitConfig, description="Training split.")
    val: SplitConfig = Field(default_factory=SplitConfig, description="Validation split.")
    test: SplitConfig = Field(default_factory=SplitConfig, description="Test split (optional).")
    names: list[str] | None = Field(
        None, description="Class names in label order (required for YOLO txt and masks; else read from the annotations)."
    )
    mask_values: list[int] | None = Field(
        None,
        description="Pixel value of each class of `names` in semantic mask PNGs (format: masks; default: the class index).",
    )
    check_images: bool = Field(
        True, description="Check when loading that every image exists and its header size matches the annotation."
    )
    strict: bool = Field(
        True,
        description=(
            "Loading mode. True: any bad item (a box that is inverted or outside its image, an annotation of an "
            "unknown image or class, an unreadable image, met when loading or by a loader worker) stops with one "
            "line naming the file. False: such items are skipped and counted in the dataset summary, and training "
            "goes on. Boxes overshooting the border are clipped and counted in both modes."
        ),
    )
    cache_dir: str = Field(
        ".cache/detseg", description="Where generated datasets are written once and then reused."
    )
    workers: int = Field(2, ge=0, description="Parallel loader workers (0: load in the main thread).")
    use_multiprocessing: bool = Field(
        False, description="Loader workers as processes instead of threads."
    )
    crops: bool = Field(
        False,
        description=(
            "Classifier data as object crops: every box of this detection dataset becomes one labelled "
            "image (model.kind: classifier; without it a classifier reads format: imagefolder)."
        ),
    )
    crop_padding: float = Field(
        0.1, ge=0, le=1, description="Context kept around each crop's box on every side, as a fraction of its width/height."
    )


# === Model ===


class YoloConfig(_Section):
    """Options of the YOLOv3-style anchor head."""

    levels: list[str] = Field(
        ["P3", "P4", "P5"], description="Backbone pyramid levels the head predicts on (two for tiny models)."
    )
    anchors: Literal["auto"] | list[list[float]] = Field(
        "auto",
        description=(
            "Prior boxes [[w, h], ...] in input pixels, smallest first, len(levels) x anchors_per_level of them; "
            "'auto' fits them with k-means on the training boxes. YOLOv3's COCO anchors at 416 px: "
            "[[10,13],[16,30],[33,23],[30,61],[62,45],[59,119],[116,90],[156,198],[373,326]]."
        ),
    )
    anchors_per_level: int = Field(3, ge=1, description="Anchors predicted at every grid cell of a level.")
    width: float = Field(1.0, gt=0, description="Channel multiplier of the neck and head.")
    depth: int = Field(
        1, ge=1, description="(1x1, 3x3) conv pairs per level, the head's 3x3 included: 1 is YOLOv3-tiny's head, 3 YOLOv3's."
    )
    assign_thresh: float = Field(
        0.0, ge=0, le=1, description="Also assign a box to every other anchor whose shape IoU exceeds this (0: best only)."
    )
    neighbour_cells: bool = Field(
        True,
        description=(
            "Also assign every box to the two neighbouring cells nearest its centre (YOLOv5's rule: "
            "up to 3x the positives); the centre offsets then decode over (-0.5, 1.5) cells so those "
            "cells can reach it. Default on: on BCCD in 15 CPU minutes, two seeds each, it raised "
            "best val AP from 0.507 to 0.522 and test AP75 from 0.47 to 0.57; on the 8-minute demo "
            "val AP from 0.648 to 0.671 (one seed), and with box_bins 16 from 0.714-0.731 to "
            "0.732-0.743 (two seeds) (benchmarks/BENCHMARKS.md)."
        ),
    )
    max_boxes: int = Field(
        100, ge=1, description="Most ground-truth boxes per image given to the training targets (extra ones are counted and dropped)."
    )
    ignore_thresh: float = Field(
        0.5, ge=0, le=1, description="Predictions overlapping a ground truth above this IoU are not penalised as background."
    )
    box_loss: Literal["yolov3", "ciou", "giou"] = Field(
        "ciou",
        description=(
            "Box regression loss. Default ciou: on BCCD in 15 CPU minutes, two seeds each, giou gave "
            "best val AP 0.500 against 0.507 (benchmarks/BENCHMARKS.md)."
        ),
    )
    box_weight: float = Field(
        5.0,
        ge=0,
        description=(
            "Weight of the box loss. Default 5: on BCCD in 15 CPU minutes, two seeds each, 10 gave the "
            "same val AP (0.551 vs 0.553) and val AP75 (0.614 both) (benchmarks/BENCHMARKS.md)."
        ),
    )
    box_bins: int = Field(
        16,
        ge=0,
        description=(
            "0: YOLOv3's box offsets. R >= 2: a distribution-focal box head (GFL, YOLOv8): each side's "
            "distance from the cell centre is a softmax over R bins spread over 0..2 anchor sizes, "
            "trained with the distribution focal loss next to the IoU loss (box_loss ciou or giou; "
            "set 0 with yolov3). Default 16: on BCCD in 15 CPU minutes, two seeds each, it raised "
            "best val AP from 0.554 to 0.589 and test AP from 0.539 to 0.575; on the 8-minute demo "
            "val AP from 0.648 to 0.731 in the same 19 epochs (one seed). Its cost grows with the "
            "anchors: on BCCD at 416 px (P3-P5) the training step is 0.90x that without bins, so "
            "configs/bccd_yolov3.yaml takes 4 (1.00x; best val AP 0.569-0.572 against 0.585); "
            "on the demo (P4-P5 at 320 px) 16 bins alone cost no epoch time "
            "(benchmarks/BENCHMARKS.md)."
        ),
    )
    obj_weight: float = Field(1.0, ge=0, description="Weight of the objectness loss.")
    cls_weight: float = Field(1.0, ge=0, description="Weight of the classification loss.")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Class label smoothing.")
    objectness_target: Literal["one", "iou"] = Field(
        "one",
        description=(
            "Objectness target of the assigned anchors: one (YOLOv3), or iou: the IoU of the decoded "
            "predicted box with its ground truth (no gradient through it), so the score ranks boxes by "
            "how tight they are. Default one: on BCCD in 15 CPU minutes, two seeds each, iou gave the "
            "same val AP (0.535 vs 0.536) and test AP (0.516 vs 0.515) (benchmarks/BENCHMARKS.md)."
        ),
    )

    @model_validator(mode="after")
    def _box_bins_need_an_iou_loss(self) -> YoloConfig:
        if self.box_bins == 1 or (self.box_bins and self.box_loss == "yolov3"):
            raise ValueError(
                f"model.yolo.box_bins must be 0 or >= 2, and 0 with box_loss yolov3 (its bins need "
                f"an IoU loss, ciou or giou); got box_bins={self.box_bins}, box_loss={self.box_loss!r}"
            )
        return self


# Keys of other sections, in groups, for the `unused` lists of the model kinds below.
_CROPS = ("data.crops", "data.crop_padding")
_MOSAIC = ("train.augment.mosaic_p", "train.augment.mosaic_close")
_BOX_VISIBILITY = ("train.augment.min_visibility", "train.augment.min_area")
_PREDICT_RUNTIME = ("predict.runtime",)  # only the detector's predictions run on onnxruntime so far
_DETECTION_POSTPROCESS = (
    "eval.score_thr",
    "eval.iou_thr",
    "eval.max_det",
    "eval.voc_iou_thr",
    "predict.score_thr",
    "predict.iou_thr",
    "predict.max_det",
    "predict.agnostic_nms",
)
_SEGMENTATION_PREDICT = ("predict.tile", "predict.tile_overlap", "predict.rle")


class _ModelSection(_Section):
    """Fields every model kind has: the backbone, its weights and the input size."""

    backbone: str = Field(
        "darknet_tiny", description="Backbone name from detseg.backbones.BACKBONES, 'applications:<name>' or 'kerascv:<name>'."
    )
    backbone_width: float = Field(1.0, gt=0, description="Channel multiplier of the backbone, where it has one.")
    weights: str | None = Field(
        None, description="Backbone weights: null (random), 'imagenet' (keras.applications), or a local .weights.h5 file."
    )
    input_size: int = Field(320, ge=32, description="Square model input side in pixels; a multiple of 32.")

    unused: ClassVar[tuple[str, ...]] = ()
    """Dotted keys of other sections this kind does not use: setting one to a non-default value is an error."""
    input_multiple: ClassVar[int] = 32
    """`input_size` must be a multiple of this (the total stride of the feature pyramid)."""

    @field_validator("input_size")
    @classmethod
    def _input_multiple(cls, value: int) -> int:
        if value % cls.input_multiple:
            raise ValueError(f"must be a multiple of {cls.input_multiple}")
        return value


class DetectorModelConfig(_ModelSection):
    """A YOLOv3-style anchor detector (`kind: yolov3`) on a backbone pyramid."""

    kind: Literal["yolov3"] = Field("yolov3", description="Task head to build: the YOLOv3-style detector.")
    yolo: YoloConfig = Field(default_factory=YoloConfig, description="YOLO head options.")

    unused: ClassVar[tuple[str, ...]] = (*_CROPS, *_SEGMENTATION_PREDICT)


class ClassifierModelConfig(_ModelSection):
    """An image classifier (`kind: classifier`): a backbone plus a classification top."""

    kind: Literal["classifier"] = Field("classifier", description="Task head to build: an image classifier.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout before the output layer.")
    top: Literal["gap", "paper"] = Field(
        "gap",
        description=(
            "Classifier top: 'gap' (global average pooling + softmax, any backbone) or 'paper' "
            "(the original dense top of lenet5, alexnet, vgg16/19, fashion_cnn; fixed input size)."
        ),
    )
    input_size: int = Field(
        320, ge=8, description="Square model input side in pixels (any size: a classifier has no pyramid to align)."
    )
    grayscale: bool = Field(
        False,
        description="Turn the RGB input into one grey channel inside the model (networks designed on grayscale, e.g. fashion_cnn).",
    )
    aux_loss_weight: float | None = Field(
        None,
        ge=0,
        description=(
            "GoogLeNet only: add its two auxiliary classifiers, each loss weighted by this in "
            "training (the paper used 0.3); null: none."
        ),
    )

    input_multiple: ClassVar[int] = 1
    # Crops are classified whole: no boxes to keep visible, no mosaic; evaluation and
    # prediction report top-k classes, with no score threshold or NMS.
    unused: ClassVar[tuple[str, ...]] = (
        *_MOSAIC, *_BOX_VISIBILITY, *_DETECTION_POSTPROCESS, *_SEGMENTATION_PREDICT, *_PREDICT_RUNTIME
    )


class UNetConfig(_Section):
    """Options of the U-Net decoder and its loss."""

    depth: int = Field(
        4,
        ge=1,
        le=6,
        description=(
            "Poolings of the original U-Net encoder (backbone: unet; 4 in the paper, 64 * "
            "model.backbone_width base filters)."
        ),
    )
    decoder_filters: list[int] | None = Field(
        None,
        description=(
            "Widths of the decoder stages, coarsest first, one per stride halving; null: the "
            "encoder's channels at each stride."
        ),
    )
    upsampling: Literal["transpose", "bilinear"] = Field(
        "transpose", description="Decoder upsampling: 2x2 stride-2 Conv2DTranspose (the paper's up-conv) or bilinear + 1x1 conv."
    )
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout after each decoder stage.")
    loss: Literal["ce", "dice", "ce+dice"] = Field(
        "ce+dice", description="Pixel cross-entropy, soft Dice over the classes present, or their sum."
    )
    class_weights: list[float] | None = Field(
        None, description="Cross-entropy weight of each class (in data.names order); null: all 1."
    )


class SegmenterModelConfig(_ModelSection):
    """A U-Net semantic segmenter (`kind: unet`) on the original encoder or any backbone."""

    kind: Literal["unet"] = Field("unet", description="Task head to build: the U-Net segmenter.")
    backbone: str = Field(
        "unet",
        description=(
            "Encoder: 'unet' (the paper's double-conv + max-pool path), a detseg.backbones name, "
            "'applications:<name>' or 'kerascv:<name>'."
        ),
    )
    unet: UNetConfig = Field(default_factory=UNetConfig, description="U-Net decoder and loss options.")

    @model_validator(mode="after")
    def _depth_is_for_the_unet_encoder(self) -> SegmenterModelConfig:
        if self.backbone != "unet" and self.unet.depth != UNetConfig.model_fields["depth"].default:
            raise ValueError(
                f"model.unet.depth applies to backbone 'unet' only; {self.backbone!r} has its own depth"
            )
        return self

    # A segmenter scores pixels: no boxes to keep visible, no detection thresholds or NMS.
    unused: ClassVar[tuple[str, ...]] = (*_CROPS, *_BOX_VISIBILITY, *_DETECTION_POSTPROCESS, *_PREDICT_RUNTIME)



class LocalizerModelConfig(_ModelSection):
    """Classification + localization of one object per image (`kind: localize`): a backbone,
    global pooling, a class softmax and one box regressor."""

    kind: Literal["localize"] = Field(
        "localize", description="Task head to build: the single-object classifier + box regressor."
    )
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the pooled features, before both outputs.")
    class_weight: float = Field(0.8, ge=0, description="Weight of the class loss (sparse cross-entropy).")
    box_weight: float = Field(0.2, ge=0, description="Weight of the box loss.")
    box_loss: Literal["mse", "giou"] = Field(
        "mse", description="Box loss: squared error of the normalised (cx, cy, w, h), or 1 - GIoU."
    )
    objects: Literal["largest", "single"] = Field(
        "largest",
        description=(
            "How a detection dataset becomes one object per image: 'largest' keeps each image's "
            "largest box, 'single' keeps only the images with exactly one object (others are "
            "skipped and counted)."
        ),
    )

    @model_validator(mode="after")
    def _some_loss(self) -> LocalizerModelConfig:
        if self.class_weight + self.box_weight <= 0:
            raise ValueError("class_weight and box_weight cannot both be 0")
        return self

    # One box per image, always kept (an augmentation that loses it is not applied): no
    # mosaic, no crops; evaluation and prediction report the one class and box, with no
    # score threshold or NMS.
    unused: ClassVar[tuple[str, ...]] = (
        *_CROPS, *_MOSAIC, *_DETECTION_POSTPROCESS, *_SEGMENTATION_PREDICT, *_PREDICT_RUNTIME
    )


class FCNModelConfig(ClassifierModelConfig):
    """A sliding-window detector (`kind: fcn`): a classifier trained on object and background
    crops, made fully convolutional after training and slid over whole images.

    `input_size` is the window: crops are resized to it, and each scale s of `scales` scans
    the image with windows of `input_size / s` original pixels. Evaluation uses the `eval`
    thresholds, prediction the `predict` ones (per-class NMS over every scale).
    """

    kind: Literal["fcn"] = Field("fcn", description="Task head to build: the FCN sliding-window detector.")
    backbone: str = Field(
        "lenet5",
        description=(
            "Backbone of the window classifier: one that takes `padding` when padding is 'valid' "
            "(lenet5, alexnet)."
        ),
    )
    input_size: int = Field(32, ge=32, description="The window: side of the classifier's square input, in pixels.")
    padding: Literal["valid", "same"] = Field(
        "valid",
        description=(
            "Backbone conv padding. 'valid': each FCN grid cell equals the classifier on its "
            "window; 'same' (any backbone): the cells see real pixels where the training crops "
            "saw zero padding, which can change their scores completely."
        ),
    )
    scales: list[float] = Field(
        [1.0],
        min_length=1,
        description=(
            "Image resize factors the detector scans at (each one FCN pass); a window covers "
            "input_size / scale original pixels, so scales > 1 find smaller objects."
        ),
    )
    background_per_image: int = Field(
        4, ge=1, description="Random background windows cut from every training (and validation) image."
    )
    background_iou: float = Field(
        0.2, gt=0, lt=1, description="A background window overlaps every box by less than this IoU."
    )

    @field_validator("scales")
    @classmethod
    def _positive_scales(cls, value: list[float]) -> list[float]:
        if any(not s > 0 for s in value):
            raise ValueError("every scale must be > 0")
        return value

    # Crops (object crops squared with data.crop_padding, plus background) are classified
    # whole: no boxes to keep visible, no mosaic; NMS is per class; no tiles; the converted
    # network has one output, so no auxiliary classifiers.
    unused: ClassVar[tuple[str, ...]] = (
        "model.aux_loss_weight",
        "model.grayscale",
        "data.crops",
        *_MOSAIC,
        *_BOX_VISIBILITY,
        "predict.agnostic_nms",
        *_PREDICT_RUNTIME,
        *_SEGMENTATION_PREDICT,
    )

MODEL_KINDS: dict[str, type[_ModelSection]] = {
    "yolov3": DetectorModelConfig,
    "classifier": ClassifierModelConfig,
    "unet": SegmenterModelConfig,
    "localize": LocalizerModelConfig,
    "fcn": FCNModelConfig,
}
"""model.kind -> its config section; a new head adds its section here (and its Task in detseg.tasks)."""

DEFAULT_KIND = "yolov3"


def _model_kind(raw: Any) -> str:
    """The `kind` of a model section (a dict from YAML or a section object); yolov3 when absent."""
    kind = raw.get("kind", DEFAULT_KIND) if isinstance(raw, dict) else getattr(raw, "kind", DEFAULT_KIND)
    return str(kind)


ModelConfig = Annotated[
    Union[tuple(Annotated[section, Tag(kind)] for kind, section in MODEL_KINDS.items())],  # noqa: UP007
    Discriminator(
        _model_kind,
        custom_error_type="unknown_model_kind",
        custom_error_message=f"must be one of {', '.join(MODEL_KINDS)}",
    ),
]
"""The model section: a union discriminated by `kind`; each kind declares only its own fields."""


# === Training ===


class AugmentConfig(_Section):
    """Training augmentation (albumentations); box- and mask-aware."""

    hflip: float = Field(0.5, ge=0, le=1, description="Probability of a horizontal flip.")
    vflip: float = Field(0.0, ge=0, le=1, description="Probability of a vertical flip.")
    scale: list[float] = Field([0.75, 1.25], min_length=2, max_length=2, description="Affine zoom range.")
    translate: float = Field(0.1, ge=0, le=0.5, description="Affine shift, as a fraction of the side.")
    rotate: float = Field(0.0, ge=0, le=180, description="Affine rotation range in degrees (+/-).")
    affine_p: float = Field(0.5, ge=0, le=1, description="Probability of the affine transform.")
    crop_p: float = Field(0.0, ge=0, le=1, description="Probability of a random-sized bbox-safe crop.")
    elastic_p: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Probability of an elastic deformation (the U-Net paper's main augmentation; segmenters).",
    )
    # alpha 1000 / sigma 20 move pixels by 2.5 px on average (95th percentile 6 px): smooth,
    # tissue-like bending, measured on a 512 px coordinate ramp.
    elastic_alpha: float = Field(
        1000.0, gt=0, description="Elastic deformation: scale of the random displacement field (train.augment.elastic_p)."
    )
    elastic_sigma: float = Field(
        20.0, gt=0, description="Elastic deformation: smoothness (Gaussian sigma, pixels) of the displacement field."
    )
    brightness: float = Field(0.2, ge=0, description="Colour jitter: brightness range.")
    contrast: float = Field(0.2, ge=0, description="Colour jitter: contrast range.")
    saturation: float = Field(0.2, ge=0, description="Colour jitter: saturation range.")
    hue: float = Field(0.02, ge=0, le=0.5, description="Colour jitter: hue range.")
    color_p: float = Field(0.5, ge=0, le=1, description="Probability of the colour jitter.")
    blur_p: float = Field(0.0, ge=0, le=1, description="Probability of a small blur.")
    mosaic_p: float = Field(
        0.0,
        ge=0,
        le=1,
        description=(
            "Probability of a 4-image mosaic. On BCCD in 15 CPU minutes (two seeds each) 0.5 alone gave best "
            "val AP 0.540 against 0.536 without; with mosaic_close 0.15 0.547; on the shapes demo "
            "0.612 vs 0.578 (one run), so both detector configs set them (benchmarks/BENCHMARKS.md). The "
            "default stays off: it is every kind's default, and segmenters and classifiers were not measured."
        ),
    )
    mosaic_close: float = Field(
        0.0,
        ge=0,
        lt=1,
        description=(
            "Share of training at the end with the mosaic off (Ultralytics' close_mosaic), so that the "
            "last epochs see whole images as at test time: of train.epochs, or of train.time_limit when "
            "that runs out first. Needs train.augment.mosaic_p > 0."
        ),
    )
    min_visibility: float = Field(
        0.3, ge=0, le=1, description="Boxes keeping less than this fraction of their area after a transform are dropped."
    )
    min_area: float = Field(4.0, ge=0, description="Boxes smaller than this area (px^2) after a transform are dropped.")
    albumentations: dict[str, Any] | None = Field(
        None, description="Advanced: a full pipeline in albumentations' own to_dict() form; replaces the fields above."
    )

    @model_validator(mode="after")
    def _mosaic_to_close(self) -> AugmentConfig:
        if self.mosaic_close and not self.mosaic_p:
            raise ValueError("mosaic_close needs mosaic_p > 0 (there is no mosaic to close)")
        return self


class TrainConfig(_Section):
    """How to train: schedule, optimiser, augmentation and run bookkeeping."""

    epochs: int = Field(30, ge=1, description="Training epochs.")
    batch_size: int = Field(
        16, ge=1, description="Images per batch (the global batch: under data_parallel, split evenly over the devices)."
    )
    distribution: Literal["none", "data_parallel"] = Field(
        "none",
        description=(
            "none: one device. data_parallel: replicate the model on every local device and split each "
            "batch over them (JAX: keras.distribution.DataParallel; TensorFlow: tf.distribute."
            "MirroredStrategy); batch_size must divide by the device count. Multi-host: see README."
        ),
    )
    optimizer: Literal["adam", "adamw", "nadam", "sgd"] = Field(
        "adamw", description="Optimiser (sgd: with train.momentum, Nesterov)."
    )
    lr: float = Field(2e-3, gt=0, description="Peak learning rate.")
    weight_decay: float = Field(5e-4, ge=0, description="Weight decay (adamw, sgd).")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum.")
    schedule: Literal["constant", "cosine"] = Field("cosine", description="Learning-rate schedule after warm-up.")
    warmup_epochs: float = Field(1.0, ge=0, description="Linear learning-rate warm-up, in epochs.")
    augment: AugmentConfig = Field(default_factory=AugmentConfig, description="Augmentation of training images.")
    seed: int = Field(
        0,
        description=(
            "Seed of Python, NumPy and Keras (weights init, dropout), the shuffling and every "
            "sample's augmentation (the same with any number of loader workers)."
        ),
    )
    deterministic: bool = Field(
        False,
        description=(
            "Also make TensorFlow's ops deterministic (TensorFlow backend; slower). JAX on a CPU is "
            "already deterministic; on a GPU it needs XLA_FLAGS=--xla_gpu_deterministic_ops=true."
        ),
    )
    mixed_precision: bool = Field(
        False,
        description=(
            "Train in mixed_bfloat16 where the device computes in bfloat16 (TPU, GPU of compute "
            "capability >= 8.0, CPU with AVX512-BF16 or AMX-BF16), else in mixed_float16 with loss "
            "scaling; outputs, losses and decoding stay float32."
        ),
    )
    gallery_every: int = Field(
        0,
        ge=0,
        description=(
            "Draw the first validation images' truth | prediction into "
            "plots/gallery_epoch<NNN>.png (and TensorBoard) every N epochs and after the last; 0: never."
        ),
    )
    resume: bool = Field(False, description="Continue from the run folder's last.keras.")
    ema: bool = Field(
        False,
        description=(
            "Keep an exponential moving average of the trainable weights (the optimizer's use_ema) and "
            "validate, choose and save best.keras / last.keras with it; training itself continues on "
            "the raw weights, which last.keras keeps in its optimizer state for a resume (every model kind). "
            "Default off: on BCCD in 15 CPU minutes, two seeds each, decay 0.99 gave the same best val AP "
            "(0.534 vs 0.536), reached 0.50 two minutes sooner and swung less (benchmarks/BENCHMARKS.md)."
        ),
    )
    ema_decay: float = Field(
        0.999,
        ge=0,
        lt=1,
        description=(
            "Keras's ema_momentum with train.ema: average = decay * average + (1 - decay) * weights after "
            "every step, so the average spans about 1 / (1 - decay) steps (1000 at 0.999: a few epochs of "
            "a small dataset, short beside a run's length; lower it for runs of few steps)."
        ),
    )
    freeze_backbone_epochs: int = Field(
        0,
        ge=0,
        description=(
            "Train the head with the backbone frozen for this many epochs, then unfreeze it and "
            "continue at `finetune_lr` (every model kind)."
        ),
    )
    finetune_lr: float | None = Field(
        None, gt=0, description="Learning rate after unfreezing the backbone (default: lr / 10)."
    )
    eval_every: int = Field(
        1,
        ge=1,
        description=(
            "Score the validation split (mAP, accuracy, ...) every N epochs, and after the first and last; "
            "best.keras is chosen among the scored epochs."
        ),
    )
    time_limit: float | None = Field(
        None,
        gt=0,
        description=(
            "Stop training after this many minutes (the best model so far is kept); the learning-rate "
            "schedule then spans this time budget or `epochs`, whichever runs out first, so a run ends "
            "annealed either way (the warm-up stays in epochs; a resumed run continues the budget where "
            "it stopped)."
        ),
    )


# === Evaluation and inference ===


class EvalConfig(_Section):
    """Post-processing used when measuring mAP (low threshold: the whole PR curve counts)."""

    score_thr: float = Field(0.001, ge=0, le=1, description="Detections below this score are dropped.")
    iou_thr: float = Field(0.6, gt=0, le=1, description="NMS IoU threshold.")
    max_det: int = Field(100, ge=1, description="Detections kept per image.")
    voc_iou_thr: float = Field(0.5, gt=0, le=1, description="IoU threshold of the VOC AP.")


class PredictConfig(_Section):
    """Post-processing used for prediction and video."""

    score_thr: float = Field(0.25, ge=0, le=1, description="Detections below this score are dropped.")
    iou_thr: float = Field(0.45, gt=0, le=1, description="NMS IoU threshold.")
    max_det: int = Field(100, ge=1, description="Detections kept per image.")
    agnostic_nms: bool = Field(False, description="One NMS over all classes instead of one per class.")
    runtime: Literal["auto", "keras", "onnxruntime"] = Field(
        "auto",
        description=(
            "Detectors: what runs a .keras model in `detseg predict`. 'onnxruntime' exports it once "
            "to ONNX (decode + NMS inside, these predict thresholds baked in), cached in .cache/ "
            "beside the model, and runs that (faster on a CPU: benchmarks/BENCHMARKS.md); 'auto' "
            "uses it when onnxruntime and tf2onnx are installed and the backend is TensorFlow (the "
            "exporter needs it), else Keras."
        ),
    )
    tile: bool = Field(
        False,
        description=(
            "Segmenters: predict an image larger than the model input by overlapping tiles at full "
            "resolution instead of one letterboxed (shrunk) pass."
        ),
    )
    tile_overlap: float = Field(
        0.25, ge=0, lt=1, description="Overlap of neighbouring tiles, as a fraction of the tile side (predict.tile)."
    )
    rle: bool = Field(
        False,
        description="Segmenters: --jsonl lines also hold each present class's mask as COCO RLE.",
    )


class Config(_Section):
    """A complete run: everything `detseg train` needs, written next to the model."""

    name: str = Field("run", description="Run name: the run folder is <out_dir>/<name>.")
    out_dir: str = Field("runs", description="Parent folder of run folders.")
    data: DataConfig = Field(default_factory=DataConfig, description="Dataset.")
    model: ModelConfig = Field(default_factory=DetectorModelConfig, description="Model (its fields depend on `kind`).")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Training.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Evaluation.")
    predict: PredictConfig = Field(default_factory=PredictConfig, description="Prediction.")

    @model_validator(mode="after")
    def _no_unused_fields(self) -> Config:
        """A field the chosen model kind would ignore must keep its default (never silently dropped)."""
        for key in self.model.unused:
            section_path, name = key.rsplit(".", 1)
            section: BaseModel = self
            for part in section_path.split("."):
                section = getattr(section, part)
            default = type(section).model_fields[name].get_default(call_default_factory=True)
            if getattr(section, name) != default:
                raise ValueError(
                    f"{key}: not used by model.kind {self.model.kind!r}; remove it "
                    f"(it would be ignored; default {default!r})"
                )
        return self

    @property
    def run_dir(self) -> Path:
        """The run folder `<out_dir>/<name>`."""
        return Path(self.out_dir) / self.name


# === Loading, overrides and errors ===


def parse_override(text: str) -> tuple[str, Any]:
    """Split a CLI override `a.b=value` into its key and a YAML-parsed value (never `eval`)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise DetsegError(f"override {text!r} is not of the form key=value (e.g. train.epochs=3)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise DetsegError(f"override {text!r}: value is not valid YAML ({exc.problem})") from None
    return key, value


def _apply_override(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set `raw[a][b] = value` for key 'a.b', creating sections as needed."""
    parts = key.split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise DetsegError(f"override {key!r}: {'.'.join(parts[: i + 1])} is not a section")
        node = child
    node[parts[-1]] = value


def _untagged(loc: tuple[Any, ...]) -> tuple[tuple[Any, ...], str | None]:
    """`loc` without the union tag pydantic inserts after "model", and that tag (the kind)."""
    if len(loc) > 1 and loc[0] == "model" and loc[1] in MODEL_KINDS:
        return (loc[0], *loc[2:]), str(loc[1])
    return loc, None


def _section_at(loc: tuple[Any, ...], kind: str | None) -> type[BaseModel] | None:
    """The pydantic model that holds the field at `loc` (for listing valid keys)."""
    model: type[BaseModel] = Config
    for part in loc[:-1]:
        if model is Config and part == "model":
            model = MODEL_KINDS[kind or DEFAULT_KIND]
            continue
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def _describe_error(err: Mapping[str, Any]) -> str:
    """One readable sentence for one pydantic error entry."""
    loc, kind = _untagged(tuple(err["loc"]))
    path = ".".join(str(p) for p in loc)
    if err["type"] == "extra_forbidden":
        section = _section_at(loc, kind)
        valid = sorted(section.model_fields) if section else []
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        for_kind = f" for model.kind {kind!r}" if kind else ""
        return f"unknown key {path!r}{for_kind}{hint}; valid keys here: {', '.join(valid)}"
    msg = err["msg"].removeprefix("Value error, ")
    got = err.get("input")
    if err["type"] == "unknown_model_kind":
        return f"model.kind: {msg} (got {_model_kind(got)!r})"
    if not path:
        return msg
    return f"{path}: {msg[:1].lower()}{msg[1:]}" + ("" if isinstance(got, dict) else f" (got {got!r})")


def config_from_dict(raw: Mapping[str, Any], source: str = "<config>") -> Config:
    """Validate a plain dict into a frozen `Config`; errors name `source` and the key path."""
    try:
        return Config.model_validate(dict(raw))
    except ValidationError as exc:
        problems = "; ".join(_describe_error(e) for e in exc.errors())
        raise DetsegError(problems, source) from None


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Read a YAML config (or start from defaults when `path` is None) and apply dotted overrides.

    The run name defaults to the config file's stem, so `configs/x.yaml` trains into `runs/x`.
    """
    raw: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        p = Path(path)
        if not p.is_file():
            raise DetsegError("config file not found", source)
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise DetsegError(f"not valid YAML{where}: {getattr(exc, 'problem', exc)}", source) from None
        if loaded is not None and not isinstance(loaded, dict):
            raise DetsegError(f"expected a mapping of sections at the top, got {type(loaded).__name__}", source)
        raw = loaded or {}
        raw.setdefault("name", p.stem)
    for key, value in (overrides or {}).items():
        _apply_override(raw, key, value)
    return config_from_dict(raw, source)


def set_config_value(path: str | Path, key: str, value: Any) -> Config:
    """Write one dotted key into a YAML config file (validated first; comments are not kept)."""
    p = Path(path)
    cfg = load_config(p, {key: value})
    raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    _apply_override(raw, key, value)
    write_text(p, yaml.safe_dump(raw, sort_keys=False))
    return cfg


def dump_config(cfg: Config, path: str | Path) -> Path:
    """Write the fully resolved config as YAML (every field, defaults included), atomically."""
    return write_text(path, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
