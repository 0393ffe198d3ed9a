"""Image reading and letterboxing, with exact box mapping both ways.

Images are read once with OpenCV into RGB uint8. EXIF orientation is ignored both when
reading pixels and when reading sizes from headers, so the pixels always match the sizes
the annotation readers saw. The letterbox resizes keeping the aspect ratio and pads to a
square (pad value 114, centred); `LetterboxParams` maps boxes into it and back exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from detseg.atomic import replacing
from detseg.errors import DetsegError

__all__ = [
    "IMAGE_EXTENSIONS",
    "PAD_VALUE",
    "LetterboxParams",
    "find_images",
    "image_size",
    "letterbox",
    "letterbox_boxes",
    "letterbox_params",
    "read_image",
    "resize_to_fit",
    "unletterbox_boxes",
    "unletterbox_map",
    "write_image",
]

PAD_VALUE = 114
"""Grey used for letterbox and augmentation borders (YOLO's convention)."""

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

_READ_FLAGS = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as RGB uint8 `[H, W, 3]`; DetsegError naming the file if it is missing or does not decode."""
    path = Path(path)
    if not path.is_file():
        raise DetsegError("image file not found", path)
    bgr = cv2.imread(str(path), _READ_FLAGS)
    if bgr is None:
        raise DetsegError("image does not decode (corrupt or not an image)", path)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def write_image(image: np.ndarray, path: str | Path) -> Path:
    """Write an RGB uint8 image (the format from the suffix), atomically (`detseg.atomic`);
    DetsegError naming the file if it cannot be written."""
    path = Path(path)
    with replacing(path) as partial:
        if not cv2.imwrite(str(partial), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
            raise DetsegError("cannot write the image", path)
    return path


def image_size(path: str | Path) -> tuple[int, int]:
    """`(width, height)` from the file header, without decoding the pixels."""
    path = Path(path)
    if not path.is_file():
        raise DetsegError("image file not found", path)
    try:
        with Image.open(path) as im:
            return int(im.width), int(im.height)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DetsegError(f"not a readable image ({exc.__class__.__name__})", path) from None


def find_images(folder: str | Path) -> list[Path]:
    """Image files under `folder` (recursively), sorted, matched by extension."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DetsegError("image folder not found", folder)
    return sorted(
        p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
    )


@dataclass(frozen=True)
class LetterboxParams:
    """How an image of `width` x `height` was placed in a `size` x `size` letterbox.

    A point x of the original maps to `x * scale_x + pad_x` (continuous pixel coordinates);
    `scale_x = resized_width / width` is the exact ratio cv2.resize applied.
    """

    scale_x: float
    scale_y: float
    pad_x: int
    pad_y: int
    width: int
    height: int
    size: int

    @property
    def resized(self) -> tuple[int, int]:
        """`(width, height)` of the image inside the letterbox."""
        return round(self.width * self.scale_x), round(self.height * self.scale_y)


def letterbox_params(width: int, height: int, size: int) -> LetterboxParams:
    """The letterbox of a `width` x `height` image into `size` x `size`, without touching pixels."""
    ratio = size / max(width, height)
    new_w = min(size, max(1, round(width * ratio)))
    new_h = min(size, max(1, round(height * ratio)))
    return LetterboxParams(
        scale_x=new_w / width,
        scale_y=new_h / height,
        pad_x=(size - new_w) // 2,
        pad_y=(size - new_h) // 2,
        width=width,
        height=height,
        size=size,
    )


def resize_to_fit(
    image: np.ndarray, size: int, interpolation: int = cv2.INTER_LINEAR
) -> np.ndarray:
    """Resize keeping the aspect ratio so that the longer side is `size` (the letterbox without padding)."""
    h, w = image.shape[:2]
    new_w, new_h = letterbox_params(w, h, size).resized
    if (new_w, new_h) == (w, h):
        return image
    return cv2.resize(image, (new_w, new_h), interpolation=interpolation)


def letterbox(
    image: np.ndarray,
    size: int,
    pad_value: int = PAD_VALUE,
    interpolation: int = cv2.INTER_LINEAR,
) -> tuple[np.ndarray, LetterboxParams]:
    """Resize `image` [H, W, ...] keeping its aspect ratio and pad it, centred, to `size` x `size`.

    Use `interpolation=cv2.INTER_NEAREST` and a label `pad_value` for masks.
    """
    h, w = image.shape[:2]
    params = letterbox_params(w, h, size)
    resized = resize_to_fit(image, size, interpolation)
    new_w, new_h = params.resized
    out = np.full((size, size) + image.shape[2:], pad_value, dtype=image.dtype)
    out[params.pad_y : params.pad_y + new_h, params.pad_x : params.pad_x + new_w] = resized
    return out, params


def letterbox_boxes(boxes: np.ndarray, params: LetterboxParams) -> np.ndarray:
    """Map `[N, 4]` xyxy boxes from original pixels into the letterboxed image."""
    scale = np.array([params.scale_x, params.scale_y] * 2, np.float64)
    offset = np.array([params.pad_x, params.pad_y] * 2, np.float64)
    return (np.asarray(boxes, np.float64).reshape(-1, 4) * scale + offset).astype(np.float32)


def unletterbox_boxes(boxes: np.ndarray, params: LetterboxParams, clip: bool = True) -> np.ndarray:
    """Map `[N, 4]` xyxy boxes from letterboxed pixels back to the original image (clipped to it by default)."""
    scale = np.array([params.scale_x, params.scale_y] * 2, np.float64)
    offset = np.array([params.pad_x, params.pad_y] * 2, np.float64)
    out = (np.asarray(boxes, np.float64).reshape(-1, 4) - offset) / scale
    if clip:
        out = np.clip(out, 0.0, [params.width, params.height, params.width, params.height])
    return out.astype(np.float32)


def unletterbox_map(values: np.ndarray, params: LetterboxParams) -> np.ndarray:
    """Map a per-pixel map `[S, S, ...]` of the letterboxed image (a class map, probabilities)
    back to the original `[height, width, ...]`: the padding is cut off and the rest resized
    with nearest-neighbour interpolation, so class ids stay class ids."""
    new_w, new_h = params.resized
    inner = values[params.pad_y : params.pad_y + new_h, params.pad_x : params.pad_x + new_w]
    if (new_w, new_h) == (params.width, params.height):
        return np.ascontiguousarray(inner)
    return cv2.resize(inner, (params.width, params.height), interpolation=cv2.INTER_NEAREST)
