"""Semantic segmentation masks: one PNG per image whose pixel values name classes.

Masks are single-channel (grey/index) or palette PNGs (the palette index is the value). Each
class has a raw value (`values`, default its index): the membrane set, for example, uses
`classes=["membrane", "cell"], values=[0, 255]`. Pixels of any other value become
`IGNORE_INDEX` and are counted in the summary.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from detseg.data.files import relative_name
from detseg.data.images import find_images, image_size
from detseg.data.sample import Dataset, Sample, Summary
from detseg.errors import DetsegError

__all__ = ["load_masks", "read_mask", "read_semantic_mask"]


def read_mask(path: str | Path) -> np.ndarray:
    """The raw values `[H, W]` of a mask PNG (palette indices for palette images)."""
    path = Path(path)
    if not path.is_file():
        raise DetsegError("mask file not found", path)
    try:
        with Image.open(path) as im:
            values = np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DetsegError(f"mask does not decode ({exc.__class__.__name__})", path) from None
    if values.ndim == 3:
        if not (values[..., :3] == values[..., :1]).all():
            raise DetsegError(
                "colour masks are not supported: save grey, index or palette PNGs", path
            )
        values = values[..., 0]
    if values.dtype == bool:  # 1-bit PNGs
        values = values.astype(np.uint8)
    if values.dtype.kind not in "ui" or values.size and not 0 <= values.min() <= values.max() < 1 << 16:
        raise DetsegError("mask values are not integers in 0..65535", path)
    return values


def read_semantic_mask(path: str | Path, lut: np.ndarray) -> np.ndarray:
    """Class indices `[H, W]` uint8 of a mask PNG, through `lut` (see `Dataset.mask_lut`)."""
    return lut[read_mask(path)]


def _sample(image_path: Path, mask_path: Path, known: np.ndarray, values: list[int], summary: Summary) -> Sample:
    """One image/mask pair, checked: same size (else an error), mask values declared (else
    an error when strict; those pixels are ignored when lenient)."""
    width, height = image_size(image_path)
    raw = read_mask(mask_path)
    if raw.shape != (height, width):
        raise DetsegError(
            f"mask is {raw.shape[1]}x{raw.shape[0]} but its image is {width}x{height}", mask_path
        )
    undeclared = np.unique(raw[~known[raw]])
    if undeclared.size:
        summary.clip(
            f"mask with pixel values outside {values} (those pixels are ignored)",
            mask_path,
            strict_ok=False,
            detail=f": {undeclared[:5].tolist()}",
        )
    return Sample(image_path, width, height, semantic_mask_path=mask_path, image_id=image_path.stem)


def load_masks(
    image_dir: str | Path,
    mask_dir: str | Path,
    classes: Sequence[str],
    values: Sequence[int] | None = None,
    *,
    strict: bool = True,
) -> Dataset:
    """Pair every image with the mask of the same relative name (any image extension) and check both.

    A mask whose size differs from its image, or that does not decode, is an error (the
    pair is skipped when lenient). Strict (the default): images without masks, masks
    without images and masks with pixel values outside `values` are errors; with
    `strict=False` they are skipped (undeclared pixels ignored) and counted.
    """
    image_dir, mask_dir = Path(image_dir), Path(mask_dir)
    classes = [str(c) for c in classes]
    values = list(range(len(classes))) if values is None else [int(v) for v in values]
    if (
        len(values) != len(classes)
        or len(set(values)) != len(values)
        or not all(0 <= v < 1 << 16 for v in values)
    ):
        raise DetsegError(
            f"need one distinct mask value (0..65535) per class: classes {classes}, values {values}"
        )
    masks = {Path(relative_name(p, mask_dir)).with_suffix(""): p for p in find_images(mask_dir)}
    summary = Summary(strict=strict)
    samples, used = [], set()
    known = np.zeros(1 << 16, bool)
    known[values] = True
    for image_path in find_images(image_dir):
        key = Path(relative_name(image_path, image_dir)).with_suffix("")
        mask_path = masks.get(key)
        if mask_path is None:
            summary.skip("image without a mask", image_path)
            continue
        used.add(key)
        try:
            samples.append(_sample(image_path, mask_path, known, values, summary))
        except DetsegError as err:
            summary.reject(err, mask_path)
    for key in sorted(set(masks) - used):
        summary.skip("mask without an image", masks[key])
    if not samples:
        raise DetsegError(f"no image has a mask in {mask_dir}", image_dir)
    summary.warn(mask_dir)
    return Dataset(
        samples, classes, summary, image_dir=image_dir, mask_classes=classes, mask_values=values
    )
