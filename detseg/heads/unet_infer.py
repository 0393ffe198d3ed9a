"""Fast Python inference with a segmenter: RGB images of any size in, class maps in original
pixels out.

`Segmenter` runs a batch function (uint8 letterboxed or tiled images [B, S, S, 3] -> class
maps [B, S, S]) on images of any size. By default each image is letterboxed to the model's
input side and its class map mapped back (cut the padding, nearest-neighbour resize). With
`tile=True`, an image larger than the input is cut into overlapping S x S tiles predicted at
full resolution; each pixel takes the class from the tile whose centre is nearest, so tile
borders, where the context is poorest, are never used where a neighbour covers them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import keras
import numpy as np

from detseg.data.images import PAD_VALUE, letterbox, unletterbox_map
from detseg.errors import DetsegError

__all__ = ["Segmenter", "tile_starts"]

BatchFn = Callable[[np.ndarray], np.ndarray]
"""uint8 images [B, S, S, 3] -> class maps [B, S, S] (any integer type)."""


def tile_starts(length: int, size: int, overlap: int) -> list[int]:
    """Start offsets of tiles of `size` covering `length` pixels with at least `overlap`
    pixels shared by neighbours; the last tile ends exactly at `length` (one tile at 0 when
    `length <= size`)."""
    if length <= size:
        return [0]
    stride = max(1, size - overlap)
    count = -(-(length - size) // stride) + 1  # ceil: enough tiles to reach the end
    return [round(i * (length - size) / (count - 1)) for i in range(count)]


def _owned(starts: list[int], size: int, length: int) -> list[tuple[int, int]]:
    """The `[lo, hi)` part of each tile that it writes: up to the middle of each overlap."""
    cuts = [0] + [(a + size + b) // 2 for a, b in zip(starts, starts[1:], strict=False)] + [length]
    return list(zip(cuts, cuts[1:], strict=False))


class Segmenter:
    """Class maps `[H, W]` uint8 in original pixels for RGB uint8 images of any size.

    Args:
        batch_fn: uint8 images [B, S, S, 3] -> class maps [B, S, S].
        input_size: S.
        batch_size: images (or tiles) per call of `batch_fn`.
        tile: predict images larger than S by overlapping tiles at full resolution.
        tile_overlap: overlap of neighbouring tiles as a fraction of S.
    """

    def __init__(
        self,
        batch_fn: BatchFn,
        input_size: int,
        batch_size: int = 8,
        *,
        tile: bool = False,
        tile_overlap: float = 0.25,
    ):
        if batch_size < 1 or not 0 <= tile_overlap < 1:
            raise DetsegError(
                f"need batch_size >= 1 and 0 <= tile_overlap < 1; got {batch_size}, {tile_overlap}"
            )
        self.batch_fn = batch_fn
        self.input_size = int(input_size)
        self.batch_size = int(batch_size)
        self.tile = tile
        self.overlap = int(round(tile_overlap * input_size))

    @classmethod
    def from_model(cls, model: keras.Model, batch_size: int = 8, **options) -> Segmenter:
        """A `UNetSegmenter` (its `predict_step` gives class maps) as a `Segmenter`; each call
        is one compiled `predict_on_batch` (`Model.predict` costs ~50 ms a call)."""

        def batch_fn(images: np.ndarray) -> np.ndarray:
            return np.asarray(model.predict_on_batch(images))

        return cls(batch_fn, model.input_size, batch_size, **options)

    def _run(self, crops: list[np.ndarray]) -> list[np.ndarray]:
        maps = []
        for start in range(0, len(crops), self.batch_size):
            out = np.asarray(self.batch_fn(np.stack(crops[start : start + self.batch_size])))
            maps += list(out.astype(np.uint8))
        return maps

    def _tiled(self, image: np.ndarray) -> np.ndarray:
        size = self.input_size
        h, w = image.shape[:2]
        padded = np.full((max(h, size), max(w, size), 3), PAD_VALUE, np.uint8)
        padded[:h, :w] = image
        ys, xs = tile_starts(h, size, self.overlap), tile_starts(w, size, self.overlap)
        tiles = [padded[y : y + size, x : x + size] for y in ys for x in xs]
        maps = iter(self._run(tiles))
        out = np.zeros(padded.shape[:2], np.uint8)
        for y, (y0, y1) in zip(ys, _owned(ys, size, padded.shape[0]), strict=True):
            for x, (x0, x1) in zip(xs, _owned(xs, size, padded.shape[1]), strict=True):
                out[y0:y1, x0:x1] = next(maps)[y0 - y : y1 - y, x0 - x : x1 - x]
        return out[:h, :w]

    def __call__(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        results: list[np.ndarray | None] = [None] * len(images)
        boxed, where = [], []
        for i, image in enumerate(images):
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise DetsegError(f"expected RGB uint8 images [H, W, 3], got {image.dtype} {image.shape}")
            if self.tile and max(image.shape[:2]) > self.input_size:
                results[i] = self._tiled(image)
            else:
                boxed.append(letterbox(image, self.input_size))
                where.append(i)
        for i, (_, params), class_map in zip(where, boxed, self._run([b for b, _ in boxed]), strict=True):
            results[i] = unletterbox_map(class_map, params)
        return results
