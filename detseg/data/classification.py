"""Classification data: the labelled images of a config's split, and batches of them.

`load_classification_split(cfg.data, split)` gives a `Crops` set from an image folder
(`root/<class>/<image>`: whole images) or, with `data.crops: true`, from the boxes of any
detection dataset (the shapes set gives a 3-class problem). `ClassificationLoader` turns it
into `(images uint8 [B, S, S, 3] RGB pixels, labels int32 [B])` batches: read -> cut ->
resize to fit S -> augment -> letterbox. Like `DetectionLoader`, batch `i` of epoch `e`
depends only on `(seed, e, i)`; pass `shuffle=False` to `fit()`.
"""

from __future__ import annotations

import numpy as np

from detseg.config import DataConfig
from detseg.data.augment import Augmenter
from detseg.data.crops import Crops, cut_crop, object_crops
from detseg.data.images import letterbox, read_image, resize_to_fit
from detseg.data.loader import SeededBatches
from detseg.data.splits import SplitName, load_split
from detseg.errors import DetsegError

__all__ = ["ClassificationLoader", "check_classes", "load_classification_split"]

_NO_BOXES = np.zeros((0, 4), np.float32)
_NO_LABELS = np.zeros((0,), np.int32)


def load_classification_split(data_cfg: DataConfig, split: SplitName) -> Crops:
    """The labelled images of `split`: object crops (`data.crops`) or an image folder's whole images."""
    if data_cfg.crops:
        return object_crops(load_split(data_cfg, split), data_cfg.crop_padding)
    if data_cfg.format == "imagefolder" and data_cfg.builtin is None:
        # An image folder's samples have one whole-image box each: the crops are the images.
        return object_crops(load_split(data_cfg, split), padding=0.0)
    source = f"builtin: {data_cfg.builtin}" if data_cfg.builtin else f"format: {data_cfg.format}"
    raise DetsegError(
        f"a classifier reads data.format: imagefolder (root/<class>/<image>) or object crops of a "
        f"detection dataset (data.crops: true); got data.{source} without data.crops"
    )


def check_classes(crops: Crops, split: str, class_names: list[str] | None = None) -> None:
    """Fail on a split whose classes differ from `class_names` or, for training, on a class with no image."""
    if class_names is not None and crops.class_names != list(class_names):
        raise DetsegError(
            f"the {split} split's classes {crops.class_names} differ from the training classes {list(class_names)}",
            crops.root,
        )
    if not len(crops):
        raise DetsegError(f"the {split} split has no labelled images", crops.root)
    if split == "train":
        empty = [
            name for name, n in zip(crops.class_names, crops.class_counts(), strict=True) if n == 0
        ]
        if empty:
            raise DetsegError(f"no training images of class(es) {', '.join(empty)}", crops.root)


class ClassificationLoader(SeededBatches):
    """Batches `(images uint8 [B, S, S, 3] RGB pixels, labels int32 [B])` of a `Crops` set at side `S`.

    Each crop is cut from its image (RGB uint8), resized so that its longer side is `S`,
    augmented by `augment` (an `Augmenter` built for detection, called with no boxes: the
    whole crop is the object) and letterboxed to `S x S` (pad 114).
    """

    def __init__(
        self,
        crops: Crops,
        input_size: int,
        batch_size: int,
        *,
        augment: Augmenter | None = None,
        shuffle: bool = False,
        seed: int = 0,
        workers: int = 0,
        use_multiprocessing: bool = False,
        max_queue_size: int = 10,
    ):
        self.crops = crops
        self.augment = augment
        super().__init__(
            len(crops), input_size, batch_size, shuffle=shuffle, seed=seed, workers=workers,
            use_multiprocessing=use_multiprocessing, max_queue_size=max_queue_size,
        )  # fmt: skip

    def batch_indices(self, index: int) -> np.ndarray:
        """The crop indices of batch `index` of the current epoch, in row order."""
        positions = self._positions(index)
        return self._order[positions.start : positions.stop]

    def load(self, crop_index: int, position: int = 0) -> np.ndarray:
        """Crop `crop_index` as the model sees it: uint8 `[S, S, 3]` (augmented as at `position` of this epoch)."""
        image = cut_crop(read_image(self.crops.paths[crop_index]), self.crops.boxes[crop_index])
        image = resize_to_fit(image, self.input_size)
        if self.augment is not None:
            seed = int(np.random.default_rng([self.seed, self.epoch, position]).integers(1 << 31))
            image = self.augment(image, _NO_BOXES, _NO_LABELS, seed=seed)[0]
        return letterbox(image, self.input_size)[0]

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        indices = self.batch_indices(index)
        start = index * self.batch_size
        images = np.stack([self.load(int(i), start + p) for p, i in enumerate(indices)])
        return images, self.crops.labels[indices]
