"""Where annotated frames and results go: a video file, an image folder, a window, a JSONL file.

Every sink has `write(frame, ...)`, `close()`, a `label` (its kind of output) and a `target`
(where it writes); `close()` finalises the file (a video is playable after it even when the
run was interrupted). Image sinks take the annotated RGB image; the JSONL sink takes the
JSON-ready fields the task recorded for the frame's result.
"""

from __future__ import annotations

import collections
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from detseg.errors import DetsegError
from detseg.stream.sources import Frame

__all__ = [
    "VIDEO_CODECS",
    "ImageFolderSink",
    "JsonlSink",
    "RateMeter",
    "VideoFileSink",
    "WindowSink",
    "draw_fps",
    "draw_text_block",
    "show_unavailable_reason",
]

VIDEO_CODECS = {".mp4": "mp4v", ".avi": "MJPG"}
"""Video file suffixes `save` accepts and the FourCC each is written with."""

DEFAULT_VIDEO_FPS = 30.0
"""Frame rate written for a source that reports none (some webcams and streams)."""


# === Video file ===


class VideoFileSink:
    """An annotated video at `fps`, sized by its first frame (decoded frames are the truth:
    containers can report a size before rotation). A later frame of another size is an error,
    since OpenCV's writer would drop it without a word."""

    label = "video"

    def __init__(self, path: str | Path, fps: float | None):
        self.path = Path(path)
        self.target = str(self.path)
        suffix = self.path.suffix.lower()
        if suffix not in VIDEO_CODECS:
            raise DetsegError(f"video output must end in {' or '.join(VIDEO_CODECS)}", self.path)
        self.fourcc = VIDEO_CODECS[suffix]
        self.fps = fps or DEFAULT_VIDEO_FPS
        self.written = 0
        self._writer: cv2.VideoWriter | None = None
        self._size: tuple[int, int] | None = None

    def write(self, frame: Frame, image: np.ndarray) -> None:
        size = (image.shape[1], image.shape[0])
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fourcc = cv2.VideoWriter_fourcc(*self.fourcc)
            self._writer = cv2.VideoWriter(str(self.path), fourcc, self.fps, size)
            if not self._writer.isOpened():
                raise DetsegError(
                    f"cannot write a {self.fourcc} video of {size[0]}x{size[1]}", self.path
                )
            self._size = size
        elif size != self._size:
            raise DetsegError(
                f"frame {frame.index} is {size[0]}x{size[1]} but the video is "
                f"{self._size[0]}x{self._size[1]}",
                self.path,
            )
        self._writer.write(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        self.written += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()


# === Image folder ===


class ImageFolderSink:
    """Annotated images under `folder`, each with its input's name (relative path), or with
    that name's suffix replaced by `suffix` (".png" for lossless class masks)."""

    def __init__(self, folder: str | Path, *, suffix: str | None = None, label: str = "images"):
        self.folder = Path(folder)
        self.target = str(self.folder)
        self.suffix = suffix
        self.label = label
        if self.folder.exists() and not self.folder.is_dir():
            raise DetsegError("image output must be a folder, and this is a file", self.folder)
        self.written = 0

    def write(self, frame: Frame, image: np.ndarray) -> None:
        out = self.folder / (frame.file or f"{frame.index:06d}.jpg")
        if self.suffix:
            out = out.with_suffix(self.suffix)
        out.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(out), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
            raise DetsegError("cannot write image", out)
        self.written += 1

    def close(self) -> None:
        """Nothing to finalise: each image is complete once written."""


# === Window ===


def show_unavailable_reason() -> str | None:
    """Why `show` cannot work here (one line with the fix), or None when it can."""
    if not cv2.currentUIFramework():
        return (
            "--show needs OpenCV with a GUI, and this one has none (opencv-python-headless): "
            "pip uninstall -y opencv-python-headless && pip install opencv-python"
        )
    if sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    ):
        return "--show needs a display, and neither DISPLAY nor WAYLAND_DISPLAY is set"
    return None


class WindowSink:
    """An OpenCV window; `write` returns True when the user asks to quit (q or Esc).

    `hold_ms` is how long each frame waits for a key: 1 for video, 0 (until a key) for images.
    The window is created by the first `write`, so every GUI call happens on the thread that
    writes (OpenCV's Qt and GTK back-ends want one GUI thread).
    """

    label = "window"

    def __init__(self, title: str, hold_ms: int):
        reason = show_unavailable_reason()
        if reason:
            raise DetsegError(reason)
        self.title = title
        self.target = title
        self.hold_ms = hold_ms
        self._opened = False

    def write(self, frame: Frame, image: np.ndarray) -> bool:
        if not self._opened:
            cv2.namedWindow(self.title, cv2.WINDOW_NORMAL)
            self._opened = True
        cv2.imshow(self.title, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        return (cv2.waitKey(self.hold_ms) & 0xFF) in (ord("q"), 27)

    def close(self) -> None:
        if self._opened:
            cv2.destroyWindow(self.title)


# === Results as JSON lines ===


class JsonlSink:
    """One JSON object per processed frame, in processing order: the frame's `frame` index,
    `time` (media seconds, null for images), `file` (images only), `width` and `height`,
    then the fields the predictor recorded for its result (`Predictor.record`)."""

    label = "jsonl"

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.target = str(self.path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("w", encoding="utf-8")
        except OSError as exc:
            raise DetsegError(f"cannot write results: {exc.strerror}", self.path) from exc
        self.written = 0

    def write(self, frame: Frame, fields: dict[str, Any]) -> None:
        record: dict[str, Any] = {"frame": frame.index}
        record["time"] = None if frame.time is None else round(frame.time, 6)
        if frame.file is not None:
            record["file"] = frame.file
        record["width"], record["height"] = frame.image.shape[1], frame.image.shape[0]
        self._file.write(json.dumps({**record, **fields}) + "\n")
        self.written += 1

    def close(self) -> None:
        self._file.close()


# === Text overlays ===


class RateMeter:
    """Frames per second over the last `window` ticks (a rolling, not a cumulative, rate)."""

    def __init__(self, window: int = 30):
        self._ticks: collections.deque[float] = collections.deque(maxlen=window)

    def tick(self, now: float) -> float:
        """Record a frame finished at `now` (seconds); the current rate, 0 until two ticks."""
        self._ticks.append(now)
        span = self._ticks[-1] - self._ticks[0]
        return (len(self._ticks) - 1) / span if span > 0 else 0.0


def draw_text_block(image: np.ndarray, lines: Sequence[str], *, bottom: bool = False) -> np.ndarray:
    """Write `lines` in white on one black box in the top-left corner (the bottom-left one with
    `bottom`, clear of the FPS overlay), in place: readable on any background; the text
    scales with the image height."""
    scale = max(0.4, image.shape[0] / 720.0 * 0.8)
    thickness = max(1, round(scale * 2))
    pad = max(2, round(4 * scale))
    sizes = [cv2.getTextSize(line, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness) for line in lines]
    step = max(height + baseline for (_, height), baseline in sizes) + pad
    width = max(width for (width, _), _ in sizes)
    top = max(0, image.shape[0] - (len(lines) * step + pad)) if bottom else 0
    cv2.rectangle(image, (0, top), (width + 2 * pad, top + len(lines) * step + pad), (0, 0, 0), -1)
    for i, (line, ((_, height), _)) in enumerate(zip(lines, sizes, strict=True)):
        cv2.putText(
            image,
            line,
            (pad, top + pad + i * step + height),
            cv2.FONT_HERSHEY_SIMPLEX,
            scale,
            (255, 255, 255),
            thickness,
            cv2.LINE_AA,
        )
    return image


def draw_fps(image: np.ndarray, fps: float) -> np.ndarray:
    """Write "<fps> FPS" in white on a black box in the top-left corner, in place."""
    return draw_text_block(image, [f"{fps:.1f} FPS"])
