"""The built-in dataset: circles, squares and triangles, generated deterministically from a seed.

Every image has `min_objects..max_objects` shapes of random size, colour and rotation
(squares and triangles rotate) on a noisy or textured background. Shapes may overlap or be
cut by the border, but each keeps at least 60% of its area visible and a visible box of at
least 12 px a side, so the data stays learnable. Boxes, polygons and areas describe the
visible part; they are written as COCO JSON with semantic mask PNGs (0 background, label + 1
for a shape). `write_shapes_video` makes a matching MP4 of moving shapes with its ground truth.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from detseg.config import ShapesConfig
from detseg.data.coco import load_coco, write_coco
from detseg.data.files import read_json, write_json
from detseg.data.sample import Dataset, Sample
from detseg.errors import DetsegError

__all__ = [
    "CLASS_NAMES",
    "SHAPES_MASK_CLASSES",
    "generate_shapes",
    "load_shapes",
    "shapes_dir",
    "write_shapes_video",
]

CLASS_NAMES = ["circle", "square", "triangle"]
SHAPES_MASK_CLASSES = ["background", *CLASS_NAMES]
"""Semantic mask classes in value order: pixel value 0 is background, label + 1 a shape."""

MIN_VISIBLE_SIDE = 12  # px: a shape's visible box is at least this wide and high
MIN_VISIBLE_FRACTION = 0.6  # of a shape's own area, after the border and later shapes
MIN_COLOR_DISTANCE = 90.0  # RGB distance between a shape and what it is drawn on
_PLACEMENT_TRIES = 25
_GENERATOR_VERSION = 1  # bump when the images change, so that caches regenerate
_SPLITS = {"train": 0, "val": 1, "test": 2}
_SUBPIXEL = 4  # cv2.fillPoly shift: polygon vertices in 1/16 px


# === Geometry ===


def _unit_polygon(kind: int) -> np.ndarray:
    """Vertices [K, 2] of a circle (64-gon), square or equilateral triangle around the origin."""
    if kind == 0:
        t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    elif kind == 1:
        t = np.linspace(0, 2 * np.pi, 4, endpoint=False) + np.pi / 4
    else:
        t = np.linspace(0, 2 * np.pi, 3, endpoint=False) - np.pi / 2
    return np.stack([np.cos(t), np.sin(t)], axis=1)


_UNIT = [_unit_polygon(k) for k in range(3)]


def _polygon(
    kind: int, cx: float, cy: float, size: float, angle: float, fit_box: bool = True
) -> np.ndarray:
    """Vertices of a shape rotated by `angle` around (cx, cy).

    With `fit_box` the shape is scaled so that its box's longer side is `size` and centred on
    the point; otherwise its circumscribed circle has diameter `size` (a constant physical
    size while it turns, for the video).
    """
    c, s = np.cos(angle), np.sin(angle)
    pts = _UNIT[kind] @ np.array([[c, s], [-s, c]])
    if fit_box:
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        return (pts - (lo + hi) / 2) * (size / (hi - lo).max()) + [cx, cy]
    return pts * (size / 2) + [cx, cy]


def _rasterize(polygon: np.ndarray, width: int, height: int) -> tuple[np.ndarray, int, int] | None:
    """Binary mask of the polygon inside its clipped bounding box, with the box's top-left (None if off-image)."""
    x0, y0 = np.floor(polygon.min(axis=0)).astype(int)
    x1, y1 = np.ceil(polygon.max(axis=0)).astype(int)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if x1 <= x0 or y1 <= y0:
        return None
    roi = np.zeros((y1 - y0, x1 - x0), np.uint8)
    pts = np.round((polygon - [x0, y0]) * (1 << _SUBPIXEL)).astype(np.int32)
    cv2.fillPoly(roi, [pts], 1, lineType=cv2.LINE_8, shift=_SUBPIXEL)
    return roi, x0, y0


# === Rendering ===


@dataclass
class _Placed:
    """A drawn shape: class, colour, its own area, pixels still visible, and its raster's box in the image."""

    kind: int
    color: np.ndarray
    full_area: float
    visible: int
    x0: int
    y0: int
    shape: tuple[int, int]


_BACKGROUNDS = 48  # distinct textures per dataset; each image flips/transposes and tints one


def _noise_bank(seed: int, size: int) -> np.ndarray:
    """A [2S, 2S, 3] tile of unit Gaussian noise; images take random crops of it (much cheaper than fresh noise)."""
    return (
        np.random.default_rng([seed, 7919])
        .standard_normal((2 * size, 2 * size, 3))
        .astype(np.float32)
    )


@dataclass
class _Textures:
    """Pre-rendered backgrounds and film grain, so that one image costs a few cheap OpenCV calls."""

    backgrounds: np.ndarray  # [K, S, S, 3] uint8
    grain: np.ndarray  # [2S, 2S, 3] int16

    @classmethod
    def make(cls, seed: int, size: int) -> _Textures:
        bank = _noise_bank(seed, size)
        rng = np.random.default_rng([seed, 104729])
        backgrounds = np.stack(
            [
                np.clip(_background(rng, size, bank), 0, 255).astype(np.uint8)
                for _ in range(_BACKGROUNDS)
            ]
        )
        return cls(backgrounds, np.round(bank * 3.0).astype(np.int16))

    def background(self, rng: np.random.Generator) -> np.ndarray:
        """A random pre-rendered background, flipped or transposed, with a random tint."""
        image = self.backgrounds[rng.integers(len(self.backgrounds))]
        variant = int(rng.integers(8))
        if variant & 4:
            image = cv2.transpose(image)
        if variant & 3:
            image = cv2.flip(image, (variant & 3) - 2)
        tint = (*(float(v) for v in rng.uniform(-40, 40, 3)), 0.0)
        return cv2.add(image, tint)

    def add_grain(self, rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
        size = image.shape[0]
        oy, ox = rng.integers(0, size, 2)
        return cv2.add(image, self.grain[oy : oy + size, ox : ox + size], dtype=cv2.CV_8U)


def _background(rng: np.random.Generator, size: int, bank: np.ndarray) -> np.ndarray:
    """A flat, gradient, blotchy or striped background with fine noise, as float32 [S, S, 3]."""
    kind = rng.integers(4)
    base = rng.uniform(0, 255, 3).astype(np.float32)
    if kind == 1:
        other = rng.uniform(0, 255, 3).astype(np.float32)
        direction = rng.uniform(0, 2 * np.pi)
        ramp = np.linspace(0, 1, size, dtype=np.float32)
        t = np.add.outer(ramp * np.sin(direction), ramp * np.cos(direction))
        t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
        image = base + t[..., None] * (other - base)
    elif kind == 2:
        blotches = rng.uniform(-60, 60, (4, 4, 3)).astype(np.float32)
        image = base + cv2.resize(blotches, (size, size), interpolation=cv2.INTER_CUBIC)
    elif kind == 3:
        period = rng.uniform(8, 40)
        direction = rng.uniform(0, np.pi)
        axis = np.arange(size, dtype=np.float32)
        phase = np.add.outer(axis * np.sin(direction), axis * np.cos(direction)) * (
            2 * np.pi / period
        )
        image = base + np.sin(phase)[..., None] * rng.uniform(10, 35, 3).astype(np.float32)
    else:
        image = np.broadcast_to(base, (size, size, 3))
    oy, ox = rng.integers(0, size, 2)
    return image + bank[oy : oy + size, ox : ox + size] * rng.uniform(3, 18)


def _color_far_from(rng: np.random.Generator, others: list[np.ndarray]) -> np.ndarray | None:
    """A random colour at least MIN_COLOR_DISTANCE from every colour in `others` (None if none found quickly)."""
    for _ in range(8):
        color = rng.uniform(0, 255, 3).astype(np.float32)
        if all(np.linalg.norm(color - o) >= MIN_COLOR_DISTANCE for o in others):
            return color
    return None


def _visible_box(inst: np.ndarray, index: int, p: _Placed) -> np.ndarray | None:
    """Continuous xyxy box of the pixels of instance `index` (None when none are left)."""
    roi = inst[p.y0 : p.y0 + p.shape[0], p.x0 : p.x0 + p.shape[1]] == index
    rows, cols = np.flatnonzero(roi.any(axis=1)), np.flatnonzero(roi.any(axis=0))
    if not len(rows):
        return None
    return np.array(
        [p.x0 + cols[0], p.y0 + rows[0], p.x0 + cols[-1] + 1, p.y0 + rows[-1] + 1], np.float32
    )


def _big_enough(box: np.ndarray | None) -> bool:
    return box is not None and min(box[2] - box[0], box[3] - box[1]) >= MIN_VISIBLE_SIDE


def _try_place(
    rng: np.random.Generator,
    cfg: ShapesConfig,
    image: np.ndarray,
    inst: np.ndarray,
    placed: list[_Placed],
) -> bool:
    """Draw one more shape if a random placement keeps every shape visible and distinct enough."""
    size_px = cfg.image_size
    for _ in range(_PLACEMENT_TRIES):
        kind = int(rng.integers(3))
        side = float(np.exp(rng.uniform(np.log(cfg.min_size), np.log(cfg.max_size))))
        cx, cy = rng.uniform(-0.3 * side, size_px + 0.3 * side, 2)
        angle = 0.0 if kind == 0 else float(rng.uniform(0, 2 * np.pi))
        polygon = _polygon(kind, cx, cy, side, angle)
        raster = _rasterize(polygon, size_px, size_px)
        if raster is None:
            continue
        roi, x0, y0 = raster
        full_area = float(cv2.contourArea(polygon.astype(np.float32)))
        drawn = roi.astype(bool)
        if drawn.sum() < MIN_VISIBLE_FRACTION * full_area:
            continue
        under = inst[y0 : y0 + roi.shape[0], x0 : x0 + roi.shape[1]]
        covered = np.bincount(under[drawn], minlength=len(placed) + 1)
        hit = np.flatnonzero(covered[1:]) + 1
        if any(
            placed[i - 1].visible - covered[i] < MIN_VISIBLE_FRACTION * placed[i - 1].full_area
            for i in hit
        ):
            continue
        ground = image[y0 : y0 + roi.shape[0], x0 : x0 + roi.shape[1]][drawn & (under == 0)]
        others = [placed[i - 1].color for i in hit] + ([ground.mean(axis=0)] if len(ground) else [])
        color = _color_far_from(rng, others)
        if color is None:
            continue
        saved = under.copy()
        under[drawn] = len(placed) + 1
        candidate = _Placed(kind, color, full_area, int(drawn.sum()), x0, y0, roi.shape)
        if not all(
            _big_enough(_visible_box(inst, i, placed[i - 1])) for i in hit
        ) or not _big_enough(_visible_box(inst, len(placed) + 1, candidate)):
            under[:] = saved
            continue
        for i in hit:
            placed[i - 1].visible -= int(covered[i])
        image[y0 : y0 + roi.shape[0], x0 : x0 + roi.shape[1]][drawn] = color
        placed.append(candidate)
        return True
    return False


def _render(
    rng: np.random.Generator, cfg: ShapesConfig, textures: _Textures
) -> tuple[np.ndarray, np.ndarray, list[_Placed]]:
    """One image: RGB uint8 [S, S, 3], the instance map [S, S] uint8 (0 none, i+1 shape i), the shapes."""
    image = textures.background(rng)
    inst = np.zeros((cfg.image_size, cfg.image_size), np.uint8)
    placed: list[_Placed] = []
    for _ in range(int(rng.integers(cfg.min_objects, cfg.max_objects + 1))):
        _try_place(rng, cfg, image, inst, placed)
    return textures.add_grain(rng, image), inst, placed


def _outline(mask: np.ndarray, x0: int, y0: int) -> list[list[float]]:
    """COCO polygons that pycocotools rasterises back to exactly the pixels of `mask` (offset by x0, y0).

    Contours through pixel centres lose half a pixel all round (a whole tip of a triangle);
    traced on the mask upsampled 2x, they run a quarter pixel inside the pixel edges instead.
    """
    up = cv2.resize(mask, None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(up, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [
        ((c.reshape(-1, 2) + 0.5) / 2 + [x0, y0]).reshape(-1).tolist()
        for c in contours
        if len(c) >= 3
    ]


def _annotations(
    inst: np.ndarray, placed: list[_Placed]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:
    """Visible boxes, labels, pixel areas and COCO polygons of every placed shape."""
    boxes, areas, polygons = [], [], []
    for index, p in enumerate(placed, start=1):
        boxes.append(_visible_box(inst, index, p))
        roi = (inst[p.y0 : p.y0 + p.shape[0], p.x0 : p.x0 + p.shape[1]] == index).astype(np.uint8)
        areas.append(float(roi.sum()))
        polygons.append(_outline(roi, p.x0, p.y0))
    labels = np.array([p.kind for p in placed], np.int32)
    return np.array(boxes, np.float32).reshape(-1, 4), labels, np.array(areas, np.float32), polygons


# === Dataset on disk ===


def _write_png_jpg(image_path: Path, image: np.ndarray, mask_path: Path, mask: np.ndarray) -> None:
    ok = cv2.imwrite(
        str(image_path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95]
    )
    ok &= cv2.imwrite(str(mask_path), mask, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise DetsegError("cannot write the generated image", image_path)


def _write_split(out: Path, split: str, count: int, cfg: ShapesConfig, textures: _Textures) -> None:
    """Images, semantic masks and `annotations.json` of one split (files are encoded on two threads)."""
    (out / "images").mkdir(parents=True)
    (out / "masks").mkdir()
    semantic_lut = np.zeros(256, np.uint8)
    samples = []
    with ThreadPoolExecutor(max_workers=2) as pool:
        writes = []
        for i in range(count):
            rng = np.random.default_rng([cfg.seed, _SPLITS[split], i])
            image, inst, placed = _render(rng, cfg, textures)
            boxes, labels, areas, polygons = _annotations(inst, placed)
            semantic_lut[1 : len(placed) + 1] = labels + 1
            image_path = out / "images" / f"{split}_{i:05d}.jpg"
            mask_path = out / "masks" / f"{split}_{i:05d}.png"
            writes.append(
                pool.submit(_write_png_jpg, image_path, image, mask_path, semantic_lut[inst])
            )
            samples.append(
                Sample(
                    image_path,
                    cfg.image_size,
                    cfg.image_size,
                    boxes,
                    labels,
                    area=areas,
                    masks=polygons,
                    image_id=i + 1,
                )
            )
        for done in writes:
            done.result()
    write_coco(Dataset(samples, CLASS_NAMES), out / "annotations.json", image_dir=out)


def shapes_dir(cfg: ShapesConfig, cache_dir: str | Path) -> Path:
    """`<cache_dir>/shapes_<hash>`: the folder of this exact configuration (and generator version)."""
    key = json.dumps({"version": _GENERATOR_VERSION, **cfg.model_dump()}, sort_keys=True)
    return Path(cache_dir) / f"shapes_{hashlib.sha1(key.encode()).hexdigest()[:12]}"


def generate_shapes(cfg: ShapesConfig, cache_dir: str | Path) -> Path:
    """Generate every split (and the video) once; later calls return the existing folder at once.

    Writes into a temporary folder renamed at the end, so an interrupted or concurrent
    generation never leaves a half-written dataset behind.
    """
    target = shapes_dir(cfg, cache_dir)
    if target.is_dir():
        return target
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}")
    try:
        textures = _Textures.make(cfg.seed, cfg.image_size)
        for split, count in (
            ("train", cfg.num_train),
            ("val", cfg.num_val),
            ("test", cfg.num_test),
        ):
            if count:
                _write_split(tmp / split, split, count, cfg, textures)
        if cfg.video_frames:
            truth = write_shapes_video(
                tmp / "video.mp4", cfg.video_frames, cfg.image_size, cfg.seed
            )
            write_json(
                [{"boxes": b.tolist(), "labels": lb.tolist()} for b, lb in truth],
                tmp / "video_boxes.json",
            )
        tmp.rename(target)
    except OSError:
        if not target.is_dir():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_shapes(cfg: ShapesConfig, split: str, cache_dir: str | Path) -> Dataset:
    """The `split` ('train', 'val' or 'test') of the shapes dataset, generated on first use."""
    root = generate_shapes(cfg, cache_dir)
    split_dir = root / split
    if split not in _SPLITS or not split_dir.is_dir():
        hint = " (set data.shapes.num_test to generate one)" if split == "test" else ""
        raise DetsegError(f"the shapes dataset has no split {split!r}{hint}", root)
    dataset = load_coco(split_dir / "annotations.json", split_dir, check_images=False)
    for s in dataset.samples:
        s.semantic_mask_path = split_dir / "masks" / f"{s.image_path.stem}.png"
    dataset.mask_classes = list(SHAPES_MASK_CLASSES)
    dataset.mask_values = list(range(len(SHAPES_MASK_CLASSES)))
    return dataset


def load_video_truth(path: str | Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per-frame `(boxes [N, 4], labels [N])` written next to a generated video (`video_boxes.json`)."""
    return [
        (np.array(f["boxes"], np.float32).reshape(-1, 4), np.array(f["labels"], np.int32))
        for f in read_json(path, "video ground truth")
    ]


# === Video ===


def _frame_size(size: int | tuple[int, int]) -> tuple[int, int]:
    width, height = (size, size) if isinstance(size, int) else size
    if min(width, height) < 64:
        raise DetsegError(f"video frames must be at least 64 px a side, got {width}x{height}")
    return int(width), int(height)


def write_shapes_video(
    path: str | Path,
    frames: int,
    size: int | tuple[int, int] = 320,
    seed: int = 0,
    fps: float = 15.0,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Write an MP4 (mp4v) of 3-5 shapes moving and turning without overlapping; return each frame's truth.

    Returns one `(boxes [N, 4] float32 xyxy px, labels [N] int32)` per frame, the boxes of
    the drawn pixels (shapes bounce off the borders and each other, so they stay whole).
    """
    if frames < 1:
        raise DetsegError(f"need at least one video frame, got {frames}")
    width, height = _frame_size(size)
    rng = np.random.default_rng([seed, 4099])
    side = min(width, height)
    bank = _noise_bank(seed, max(width, height))
    background = np.clip(
        _background(rng, max(width, height), bank)[:height, :width], 0, 255
    ).astype(np.uint8)
    sizes, centers = [], []
    for _ in range(
        int(rng.integers(3, 6))
    ):  # start apart: a shape that finds no free spot is left out
        size_i = rng.uniform(side / 10, side / 5)
        for _ in range(50):
            center = rng.uniform([size_i, size_i], [width - size_i, height - size_i])
            if all(
                np.linalg.norm(center - c) > (size_i + s) * 0.6
                for c, s in zip(centers, sizes, strict=True)
            ):
                sizes.append(size_i)
                centers.append(center)
                break
    count = len(sizes)
    sizes, centers = np.array(sizes), np.array(centers)
    kinds = np.arange(count) % 3
    velocity = rng.uniform(1.0, 3.5, (count, 2)) * rng.choice([-1, 1], (count, 2))
    angles = rng.uniform(0, 2 * np.pi, count) * (kinds != 0)
    spin = rng.uniform(-0.05, 0.05, count) * (kinds != 0)
    colors = [_color_far_from(rng, [background.reshape(-1, 3).mean(axis=0)]) for _ in range(count)]
    colors = [
        c if c is not None else np.float32([255, 255, 255]) - background.mean(axis=(0, 1))
        for c in colors
    ]

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise DetsegError("cannot open a video writer (mp4v) for this file", path)
    truth = []
    try:
        for _ in range(frames):
            frame = background.copy()
            boxes = []
            for i in range(count):
                polygon = _polygon(int(kinds[i]), *centers[i], sizes[i], angles[i], fit_box=False)
                roi, x0, y0 = _rasterize(polygon, width, height)
                frame[y0 : y0 + roi.shape[0], x0 : x0 + roi.shape[1]][roi.astype(bool)] = colors[i]
                rows, cols = np.flatnonzero(roi.any(axis=1)), np.flatnonzero(roi.any(axis=0))
                boxes.append([x0 + cols[0], y0 + rows[0], x0 + cols[-1] + 1, y0 + rows[-1] + 1])
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
            truth.append((np.array(boxes, np.float32).reshape(-1, 4), kinds.astype(np.int32)))
            _step(centers, velocity, sizes, width, height)
            angles = angles + spin
    finally:
        writer.release()
    return truth


def _step(
    centers: np.ndarray, velocity: np.ndarray, sizes: np.ndarray, width: int, height: int
) -> None:
    """Move every shape one frame in place; a move that would leave the frame or touch another shape reverses it.

    Shapes count as discs of diameter `size` here (they fit inside it whatever their turn),
    kept apart by a margin, so every drawn shape stays whole and separate.
    """
    for i in range(len(centers)):
        moved = centers[i] + velocity[i]
        radius = sizes[i] / 2 + 1
        out = (moved - radius < 0) | (moved + radius > [width, height])
        if out.any():
            velocity[i] = np.where(out, -velocity[i], velocity[i])
            continue
        gaps = (
            np.linalg.norm(np.delete(centers, i, axis=0) - moved, axis=1)
            - (np.delete(sizes, i) + sizes[i]) * 0.6
        )
        if (gaps < 0).any():
            velocity[i] = -velocity[i]
            continue
        centers[i] = moved
