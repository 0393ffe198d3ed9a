"""See what a convolution sees: apply filters or a layer to an image and plot the maps.

`feature_maps(line_filters(), "photo.jpg", "maps.png")` reproduces the classic picture of
a vertical-line and a horizontal-line filter applied to a photo.
"""

import math
import os

import cv2
import keras
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from detseg.errors import DetsegError


def line_filters(size: int = 7, channels: int = 3) -> np.ndarray:
    """Two filters `[size, size, channels, 2]`: map 0 a vertical line of ones (responds to
    vertical lines), map 1 a horizontal line of ones."""
    filters = np.zeros((size, size, channels, 2), dtype="float32")
    filters[:, size // 2, :, 0] = 1.0
    filters[size // 2, :, :, 1] = 1.0
    return filters


def feature_maps(
    model_or_filters,
    image,
    out_png: "str | os.PathLike | None" = None,
    *,
    level: "str | None" = None,
    max_maps: int = 16,
) -> np.ndarray:
    """Feature maps `[H', W', C]` of `image` under a filter bank or a Keras layer/model.

    `model_or_filters`: a NumPy array `[kh, kw, cin, cout]` (convolved with "same"
    padding, stride 1) or any callable Keras layer/model; for a backbone (dict outputs)
    `level` picks the map set (default: the first). `image`: a file path or an array
    `[H, W]` / `[H, W, C]`, passed as float32 pixels with their values (0..255 for uint8, the
input every detseg model takes and scales itself). When `out_png` is given,
    the first `max_maps` maps are saved there as a grid of grey-level images.
    """
    pixels = _load_image(image)
    if isinstance(model_or_filters, np.ndarray):
        maps = _convolve(model_or_filters, pixels)
    else:
        maps = _apply_model(model_or_filters, pixels, level)
    if out_png is not None:
        save_grid(maps, out_png, max_maps=max_maps)
    return maps


def _load_image(image) -> np.ndarray:
    if isinstance(image, (str, os.PathLike)):
        pixels = cv2.imread(os.fspath(image), cv2.IMREAD_COLOR)
        if pixels is None:
            raise DetsegError("cannot read this image", image)
        pixels = cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
    else:
        pixels = np.asarray(image)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.ndim != 3:
        raise DetsegError(f"an image must be [H, W] or [H, W, C], got shape {pixels.shape}")
    return pixels.astype("float32")


def _convolve(filters: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    if filters.ndim != 4 or filters.shape[2] != pixels.shape[2]:
        raise DetsegError(
            f"filters must be [kh, kw, cin, cout] with cin = {pixels.shape[2]} image "
            f"channels, got shape {filters.shape}"
        )
    maps = keras.ops.conv(pixels[None], filters.astype("float32"), padding="same")
    return keras.ops.convert_to_numpy(maps)[0]


def _apply_model(model, pixels: np.ndarray, level: "str | None") -> np.ndarray:
    outputs = model(pixels[None])
    if isinstance(outputs, dict):
        key = level if level is not None else next(iter(outputs))
        if key not in outputs:
            raise DetsegError(f"no output {key!r} (valid: {', '.join(outputs)})")
        outputs = outputs[key]
    maps = keras.ops.convert_to_numpy(outputs)
    if maps.ndim != 4:
        raise DetsegError(f"feature maps must be [1, H, W, C], the model returned {maps.shape}")
    return maps[0]


def save_grid(maps: np.ndarray, out_png: "str | os.PathLike", *, max_maps: int = 16) -> None:
    """Save the first `max_maps` channels of `maps [H, W, C]` as a PNG grid, one panel each."""
    count = min(maps.shape[-1], max_maps)
    cols = math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    figure = Figure(figsize=(2.2 * cols, 2.2 * rows))
    FigureCanvasAgg(figure)
    for i in range(count):
        axes = figure.add_subplot(rows, cols, i + 1)
        axes.imshow(maps[:, :, i], cmap="gray")
        axes.set_title(f"map {i}", fontsize=8)
        axes.axis("off")
    figure.tight_layout()
    figure.savefig(os.fspath(out_png), dpi=80)
