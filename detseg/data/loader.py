"""Batches for training and evaluation: read -> (mosaic) -> augment -> letterbox -> encode.

`DetectionLoader` is a `keras.utils.PyDataset`, so `model.fit(loader)` runs it on parallel
workers. Batch `i` of epoch `e` depends only on `(seed, e, i)`: the order is a permutation
drawn from `(seed, e)` and every sample's mosaic partners and augmentation from
`(seed, e, position)`, so a fixed seed gives identical epochs with any number of workers.
(Pass `shuffle=False` to `fit()`: shuffling is the loader's job, and Keras's own batch
shuffle is not seeded.)

Images leave the loaders as uint8 RGB pixels, the letterboxed bytes themselves: every model
detseg builds scales its pixels inside (`detseg.backbones.pyramid`), so a batch crosses to the
accelerator at 1 byte a pixel, 4x fewer than float32.

Evaluation iterates a split without augmentation and maps predictions back with the
letterbox of each image::

    loader = DetectionLoader(dataset, 416, 16)          # augment=None, shuffle=False
    for i in range(len(loader)):
        images, targets = loader[i]
        samples = loader.batch_samples(i)                 # the Sample of each row
        params = loader.batch_params(i)                   # its LetterboxParams
        boxes_px = unletterbox_boxes(pred_boxes[j], params[j])
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import cv2
import keras
import numpy as np

from detseg.config import Config
from detseg.data.augment import Augmenter, build_augment
from detseg.data.images import (
    PAD_VALUE,
    LetterboxParams,
    letterbox,
    letterbox_boxes,
    letterbox_params,
    read_image,
    resize_to_fit,
)
from detseg.data.masks import read_semantic_mask
from detseg.data.sample import IGNORE_INDEX, Dataset, Sample
from detseg.errors import DetsegError

__all__ = ["PAD_LABEL", "DetectionLoader", "PaddedBoxEncoder", "SemanticMaskEncoder", "training_loader"]

PAD_LABEL = -1
"""Label of the padding rows of the default `{"boxes", "labels"}` targets."""

Encoder = Callable[..., Any]


def _area(boxes: np.ndarray) -> np.ndarray:
    """Areas of `[N, 4]` xyxy boxes (0 for empty ones)."""
    return np.maximum(boxes[:, 2] - boxes[:, 0], 0) * np.maximum(boxes[:, 3] - boxes[:, 1], 0)


class PaddedBoxEncoder:
    """Default targets: `{"boxes": [B, M, 4] float32, "labels": [B, M] int32}`, padded with PAD_LABEL.

    `M = max_boxes` is fixed so that every batch has the same shape (no retracing). Images
    with more boxes keep their first `max_boxes`; `truncated` counts the boxes cut.
    """

    def __init__(self, max_boxes: int):
        if max_boxes < 1:
            raise ValueError(f"max_boxes must be >= 1, got {max_boxes}")
        self.max_boxes = max_boxes
        self.truncated = 0

    def __call__(self, boxes: list[np.ndarray], labels: list[np.ndarray]) -> dict[str, np.ndarray]:
        out_boxes = np.zeros((len(boxes), self.max_boxes, 4), np.float32)
        out_labels = np.full((len(boxes), self.max_boxes), PAD_LABEL, np.int32)
        for row, (b, lab) in enumerate(zip(boxes, labels, strict=True)):
            n = min(len(b), self.max_boxes)
            self.truncated += len(b) - n
            out_boxes[row, :n] = b[:n]
            out_labels[row, :n] = lab[:n]
        return {"boxes": out_boxes, "labels": out_labels}


class SemanticMaskEncoder:
    """Targets of a segmenter: class-index maps `[B, S, S]` int32, IGNORE_INDEX where nothing is known.

    Its `uses_masks = "semantic"` tells the loader to read, augment and letterbox each
    sample's semantic mask and to pass the batch of them as `masks=`.
    """

    uses_masks = "semantic"

    def __call__(
        self, boxes: list[np.ndarray], labels: list[np.ndarray], masks: list[np.ndarray]
    ) -> np.ndarray:
        return np.stack(masks).astype(np.int32)


class SeededBatches(keras.utils.PyDataset):
    """Batch bookkeeping shared by the loaders: a per-epoch order fixed by `(seed, epoch)`.

    Subclasses pass the number of items; batch `i` of epoch `e` then holds the items at
    positions `i * batch_size ...` of that epoch's order (a permutation when `shuffle`).
    """

    def __init__(
        self,
        num_items: int,
        input_size: int,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int,
        workers: int,
        use_multiprocessing: bool,
        max_queue_size: int,
    ):
        super().__init__(
            workers=workers, use_multiprocessing=use_multiprocessing, max_queue_size=max_queue_size
        )
        if input_size < 1 or batch_size < 1:
            raise ValueError(
                f"input_size and batch_size must be >= 1, got {input_size} and {batch_size}"
            )
        if num_items < 1:
            raise ValueError("there is nothing to batch: no samples")
        self.num_items = int(num_items)
        self.input_size = int(input_size)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed) % (1 << 32)  # numpy seeds are non-negative
        self.used_items = self.num_items
        self.set_epoch(0)

    def drop_remainder(self, multiple: int) -> None:
        """Make every batch a multiple of `multiple` items (e.g. the data-parallel devices, which
        then get equal shares): the epoch's last batch loses its remainder, or goes when smaller.
        The items left out change every epoch with a shuffled order."""
        if multiple < 1 or self.batch_size % multiple:
            raise ValueError(f"batch_size {self.batch_size} does not divide by {multiple}")
        if self.num_items < multiple:
            raise DetsegError(f"{self.num_items} training items cannot be split over {multiple} devices")
        self.used_items = self.num_items - self.num_items % multiple

    def set_epoch(self, epoch: int) -> None:
        """Jump to `epoch` (its order and augmentation), e.g. when resuming training."""
        self.epoch = int(epoch)
        n = self.num_items
        self._order = np.random.default_rng([self.seed, self.epoch]).permutation(n) if self.shuffle else np.arange(n)

    def on_epoch_end(self) -> None:
        self.set_epoch(self.epoch + 1)

    def __len__(self) -> int:
        return -(-self.used_items // self.batch_size)

    def _positions(self, index: int) -> range:
        """Positions (in this epoch's order) of the items of batch `index`."""
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} out of range (0..{len(self) - 1})")
        return range(index * self.batch_size, min((index + 1) * self.batch_size, self.used_items))


class DetectionLoader(SeededBatches):
    """Batches `(images uint8 [B, S, S, 3] RGB pixels, targets)` of a Dataset at input side `S`.

    Each sample is read (RGB uint8), resized so that its longer side is `S`, optionally
    combined with three others into a mosaic (probability `mosaic_p`), augmented by
    `augment(image, boxes, labels, masks)` (an `Augmenter` also receives a per-sample seed),
    and letterboxed to `S x S` (pad 114). `encoder(boxes, labels)` is called once per batch
    with lists of `[Ni, 4]` float32 xyxy boxes in letterboxed pixels and `[Ni]` int32 labels
    and returns the targets (default: `PaddedBoxEncoder`). An encoder with
    `uses_masks = "semantic"` also gets `masks=` (see `SemanticMaskEncoder`).

    An image that fails to read (corrupt, or not the size its annotation says) raises a
    one-line `DetsegError` naming it when `strict` (the default), from whichever worker met
    it. With `strict=False` (training batches) it is replaced by the next readable sample,
    warned about once and counted in `dataset.summary` (counts made in worker processes
    stay there; the warnings do not), and training goes on.
    """

    def __init__(
        self,
        dataset: Dataset,
        input_size: int,
        batch_size: int,
        *,
        augment: Callable[..., tuple] | None = None,
        encoder: Encoder | None = None,
        shuffle: bool = False,
        seed: int = 0,
        workers: int = 0,
        use_multiprocessing: bool = False,
        mosaic_p: float = 0.0,
        max_queue_size: int = 10,
        strict: bool = True,
    ):
        if not 0.0 <= mosaic_p <= 1.0:
            raise ValueError(f"mosaic_p must be in [0, 1], got {mosaic_p}")
        self.dataset = dataset
        self.strict = strict
        self._unreadable: set[str] = set()
        self.augment = augment
        self.mosaic_p = float(mosaic_p)
        most = max((s.num_boxes for s in dataset.samples), default=0)
        self.encoder = (
            encoder
            if encoder is not None
            else PaddedBoxEncoder(max(1, most * (4 if mosaic_p else 1)))
        )
        self.semantic = getattr(self.encoder, "uses_masks", None) == "semantic"
        if self.semantic and dataset.mask_values is None:
            raise ValueError(
                "a semantic-mask encoder needs a dataset with semantic masks (mask_values)"
            )
        self._lut = dataset.mask_lut()
        super().__init__(
            len(dataset), input_size, batch_size, shuffle=shuffle, seed=seed, workers=workers,
            use_multiprocessing=use_multiprocessing, max_queue_size=max_queue_size,
        )  # fmt: skip

    def batch_samples(self, index: int) -> list[Sample]:
        """The samples of batch `index` of the current epoch, in row order."""
        return [self.dataset.samples[self._order[p]] for p in self._positions(index)]

    def batch_params(self, index: int) -> list[LetterboxParams]:
        """The letterbox of each row of batch `index` (exact for un-augmented, non-mosaic batches)."""
        return [
            letterbox_params(s.width, s.height, self.input_size) for s in self.batch_samples(index)
        ]

    # === One sample ===

    def _read(self, sample: Sample) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Image resized to fit `S` (longer side), its boxes scaled alike, its semantic mask (or None)."""
        image = read_image(sample.image_path)
        if image.shape[:2] != (sample.height, sample.width):
            raise DetsegError(
                f"image is {image.shape[1]}x{image.shape[0]} but its annotation says "
                f"{sample.width}x{sample.height}",
                sample.image_path,
            )
        resized = resize_to_fit(image, self.input_size)
        params = letterbox_params(sample.width, sample.height, self.input_size)
        boxes = sample.boxes * np.array([params.scale_x, params.scale_y] * 2, np.float32)
        mask = None
        if self.semantic:
            mask = read_semantic_mask(sample.semantic_mask_path, self._lut)
            mask = resize_to_fit(mask, self.input_size, cv2.INTER_NEAREST)
        return resized, boxes, mask

    def _mosaic(self, samples: list[Sample], rng: np.random.Generator) -> tuple:
        """Four samples around a random centre of a 2S canvas, cropped to the S x S window around it.

        Boxes are clipped to the window; those keeping under 30% of their area are dropped.
        """
        s = self.input_size
        canvas = np.full((2 * s, 2 * s, 3), PAD_VALUE, np.uint8)
        mask_canvas = np.full((2 * s, 2 * s), IGNORE_INDEX, np.uint8) if self.semantic else None
        cx, cy = (int(v) for v in rng.integers(s // 2, 3 * s // 2, 2))
        all_boxes, all_labels = [], []
        for corner, sample in enumerate(samples):
            image, boxes, mask = self._read(sample)
            h, w = image.shape[:2]
            x0 = (
                cx - w if corner in (0, 2) else cx
            )  # corners: top-left, top-right, bottom-left, bottom-right
            y0 = cy - h if corner in (0, 1) else cy
            ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x0 + w, 2 * s), min(y0 + h, 2 * s)
            canvas[iy0:iy1, ix0:ix1] = image[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0]
            if mask_canvas is not None:
                mask_canvas[iy0:iy1, ix0:ix1] = mask[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0]
            all_boxes.append(boxes + [x0, y0, x0, y0])
            all_labels.append(sample.labels)
        window = np.array([cx - s // 2, cy - s // 2] * 2, np.float32)
        boxes = np.concatenate(all_boxes) - window
        labels = np.concatenate(all_labels)
        clipped = np.clip(boxes, 0, s)
        keep = _area(clipped) >= 0.3 * np.maximum(_area(boxes), 1e-6)
        x, y = cx - s // 2, cy - s // 2
        image = canvas[y : y + s, x : x + s]
        mask = mask_canvas[y : y + s, x : x + s] if mask_canvas is not None else None
        return image, clipped[keep], labels[keep], mask

    def _load(self, position: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """The letterboxed image, boxes, labels and mask of the sample at `position` of this epoch
        (when lenient, of the next readable sample if that one fails to read)."""
        n = len(self.dataset)
        for attempt in range(n):
            try:
                return self._load_sample((int(self._order[position]) + attempt) % n, position, attempt)
            except DetsegError as err:
                if self.strict:
                    raise
                self._skip_unreadable(err)
        raise DetsegError("no image of the dataset can be read", self.dataset.image_dir)

    def _skip_unreadable(self, err: DetsegError) -> None:
        """Warn about and count an image that failed to read, once per file."""
        where = err.path or "?"
        if where in self._unreadable:
            return
        self._unreadable.add(where)
        self.dataset.summary.skip(f"image skipped by the loader: {err.problem}", where, strict_ok=True)
        warnings.warn(f"{err} (skipped: data.strict is false)", stacklevel=2)

    def _load_sample(
        self, index: int, position: int, attempt: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """`_load` of sample `index`; augmentation seeded by `(seed, epoch, position[, attempt])`."""
        rng = np.random.default_rng([self.seed, self.epoch, position] + ([attempt] if attempt else []))
        sample = self.dataset.samples[index]
        if self.mosaic_p and rng.random() < self.mosaic_p:
            partners = rng.integers(0, len(self.dataset), 3)
            image, boxes, labels, mask = self._mosaic(
                [sample] + [self.dataset.samples[p] for p in partners], rng
            )
        else:
            image, boxes, mask = self._read(sample)
            labels = sample.labels
        if self.augment is not None:
            if isinstance(self.augment, Augmenter):
                image, boxes, labels, mask = self.augment(
                    image, boxes, labels, mask, seed=int(rng.integers(1 << 31))
                )
            else:
                image, boxes, labels, mask = self.augment(image, boxes, labels, mask)
        image, params = letterbox(image, self.input_size)
        boxes = letterbox_boxes(boxes, params)
        if mask is not None:
            mask, _ = letterbox(mask, self.input_size, IGNORE_INDEX, cv2.INTER_NEAREST)
        return image, boxes, np.asarray(labels, np.int32), mask

    # === One batch ===

    def __getitem__(self, index: int) -> tuple[np.ndarray, Any]:
        rows = [self._load(p) for p in self._positions(index)]
        images = np.stack([r[0] for r in rows])  # uint8: the model scales its pixels
        boxes, labels = [r[1] for r in rows], [r[2] for r in rows]
        if self.semantic:
            return images, self.encoder(boxes, labels, masks=[r[3] for r in rows])
        return images, self.encoder(boxes, labels)


def training_loader(
    cfg: Config, dataset: Dataset, encoder: Encoder | None, *, batch_size: int | None = None
) -> DetectionLoader:
    """The training batches a config describes: its augmentation (and mosaic), seeded per-epoch
    shuffling and workers, targets made by `encoder`. The one place that builds them, for
    training, the benchmarks and the augmentation gallery alike. An encoder of semantic masks
    gets the segmentation augmentation (masks move with the image, padded with IGNORE_INDEX)."""
    semantic = getattr(encoder, "uses_masks", None) == "semantic"
    return DetectionLoader(
        dataset,
        cfg.model.input_size,
        batch_size or cfg.train.batch_size,
        augment=build_augment(cfg.train.augment, "segmentation" if semantic else "detection"),
        encoder=encoder,
        shuffle=True,
        seed=cfg.train.seed,
        workers=cfg.data.workers,
        use_multiprocessing=cfg.data.use_multiprocessing,
        mosaic_p=cfg.train.augment.mosaic_p,
        strict=cfg.data.strict,
    )
