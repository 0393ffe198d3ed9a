"""Frame sources for prediction: images, folders, globs, video files, streams and webcams.

`open_source(spec)` turns what the user typed into a `FrameSource` whose `read()` returns one
`Frame` (RGB uint8, original size) at a time and `None` at the end. Sources are *files*
(images, video files, URLs with a known frame count: every frame is processed in order) or
*live* (webcams and streams: frames keep coming whether or not anyone reads them, so the
consumer keeps only the newest). A live source that stops delivering frames raises
`DetsegError`; it never just ends.
"""

from __future__ import annotations

import glob
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from detseg.data.images import IMAGE_EXTENSIONS, read_image
from detseg.errors import DetsegError
from detseg.quiet import native_stderr_silenced

__all__ = ["Frame", "FrameSource", "ImageFiles", "open_source"]

STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")
_GLOB_CHARS = frozenset("*?[")
_MAX_SANE_FPS = 1000.0  # some streams report 90000 (their clock rate) as fps


@dataclass
class Frame:
    """One decoded frame.

    `index` counts frames read from the source (0-based, gaps mean dropped live frames);
    `image` is RGB uint8 `[H, W, 3]` at the source's resolution; `time` is the media
    timestamp in seconds (video position, seconds since a live source started, None for
    images); `file` is the image's name relative to its folder (None for video);
    `captured` is the `time.monotonic()` at which the frame was read, for latency.
    """

    index: int
    image: np.ndarray
    time: float | None
    file: str | None
    captured: float


class FrameSource(Protocol):
    """What the runner needs from a source; `open_source` builds one from a string.

    `kind` is "images", "video", "stream" or "webcam"; `live` sources drop stale frames;
    `fps` is the nominal rate (None when unknown); `length` the expected number of frames
    (None when unknown); `skipped` counts folder/glob entries that are not images, and
    `unreadable` names the image files that did not decode (skipped too).
    """

    name: str
    kind: str
    live: bool
    fps: float | None
    length: int | None
    skipped: int
    unreadable: list[str]

    def read(self) -> Frame | None:
        """The next frame, or None at the end of a file source; DetsegError on failure."""
        ...

    def close(self) -> None:
        """Release the device or file."""
        ...


# === Images ===


class ImageFiles:
    """Images read one by one in a fixed order; `names` are relative to their common folder.

    A file that does not decode (truncated, not an image) is skipped, and its name kept in
    `unreadable`, so one bad file in a folder does not end the run and is still reported.
    """

    kind = "images"
    live = False
    fps = None

    def __init__(self, name: str, paths: list[Path], skipped: int = 0):
        self.name = name
        self.paths = paths
        self.length = len(paths)
        self.skipped = skipped
        root = Path(os.path.commonpath([p.parent for p in paths])) if paths else Path()
        self.names = [p.relative_to(root).as_posix() for p in paths]
        self.unreadable: list[str] = []
        self._next = 0

    def read(self) -> Frame | None:
        while self._next < len(self.paths):
            index = self._next
            self._next += 1
            try:
                image = read_image(self.paths[index])
            except DetsegError:
                self.unreadable.append(self.names[index])
                continue
            return Frame(index, image, None, self.names[index], time.monotonic())
        return None

    def close(self) -> None:
        """Nothing to release: each image is read and closed in `read`."""


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def _image_files(spec: str, candidates: list[Path], what: str) -> ImageFiles:
    images = sorted(p for p in candidates if _is_image(p))
    skipped = len(candidates) - len(images)
    if not images:
        raise DetsegError(
            f"{what} has no images ({', '.join(IMAGE_EXTENSIONS)}); {skipped} other entries",
            spec,
        )
    return ImageFiles(spec, images, skipped)


# === Video files, streams and webcams ===


class CaptureSource:
    """Frames from an open `cv2.VideoCapture`, converted to RGB.

    For a file, the frame time is the decoder's position (exact for variable frame rates);
    for a live source it is the time since the first frame.
    """

    def __init__(self, capture: cv2.VideoCapture, name: str, kind: str, live: bool):
        self.name = name
        self.kind = kind
        self.live = live
        self.skipped = 0
        self.unreadable: list[str] = []
        fps = capture.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if 0 < fps < _MAX_SANE_FPS else None
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        self.length = None if live or count <= 0 else count
        self._capture = capture
        self._read = 0
        self._start: float | None = None

    def read(self) -> Frame | None:
        ok, bgr = self._capture.read()
        now = time.monotonic()
        if not ok:
            if self._read == 0:
                raise DetsegError(f"{self.kind} opened but no frame could be decoded", self.name)
            if self.live:
                raise DetsegError(
                    f"the {self.kind} stopped delivering frames after {self._read}", self.name
                )
            return None
        if self._start is None:
            self._start = now
        if self.live:
            stamp = now - self._start
        else:
            stamp = self._capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
        frame = Frame(self._read, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), stamp, None, now)
        self._read += 1
        return frame

    def close(self) -> None:
        self._capture.release()


def _open_capture(args: tuple, name: str, what: str, timeout: float) -> cv2.VideoCapture:
    """`cv2.VideoCapture(*args)` on a helper thread, so a backend that hangs cannot hang us.

    OpenCV's own warnings for a failed open are silenced: the DetsegError says it in one line.
    """
    result: list[cv2.VideoCapture] = []
    opener = threading.Thread(target=lambda: result.append(cv2.VideoCapture(*args)), daemon=True)
    with native_stderr_silenced():
        opener.start()
        opener.join(timeout)
    if not result:
        raise DetsegError(f"cannot open {what}: no answer within {timeout:g} s", name)
    capture = result[0]
    if not capture.isOpened():
        capture.release()
        raise DetsegError(f"cannot open {what}", name)
    return capture


def _open_webcam(index: int, timeout: float) -> CaptureSource:
    name = f"webcam {index}"
    capture = _open_capture((index,), name, "the camera (no such device, or it is busy)", timeout)
    capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the driver's own queue would add latency
    return CaptureSource(capture, name, "webcam", live=True)


def _open_stream(url: str, timeout: float) -> CaptureSource:
    """An RTSP/HTTP/... URL: live unless FFmpeg reports a frame count (a file served over HTTP)."""
    ms = int(timeout * 1000)
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
    capture = _open_capture((url, cv2.CAP_FFMPEG, params), url, "the stream", timeout + 2.0)
    live = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) <= 0
    return CaptureSource(capture, url, "stream" if live else "video", live=live)


def _open_video(path: Path, timeout: float) -> CaptureSource:
    capture = _open_capture(
        (str(path),), str(path), "as a video (not a format FFmpeg decodes)", timeout
    )
    return CaptureSource(capture, str(path), "video", live=False)


# === Parsing the source string ===


def open_source(spec: str | int | Path, *, open_timeout: float = 10.0) -> FrameSource:
    """Open what `spec` names: a webcam index ("0"), a URL, a folder, a glob, an image or a video.

    Folders are not searched recursively (use a glob such as `dir/**/*.jpg`); entries that are
    not images are counted in `skipped`. Raises DetsegError when nothing can be opened, within
    `open_timeout` seconds for devices and streams.
    """
    text = str(spec).strip()
    if text.isdigit():
        return _open_webcam(int(text), open_timeout)
    if text.lower().startswith(STREAM_SCHEMES):
        return _open_stream(text, open_timeout)
    path = Path(text)
    if path.is_dir():
        return _image_files(text, list(path.iterdir()), "folder")
    if path.is_file():  # before globbing: "shot[1].jpg" names a file, not a pattern
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            return ImageFiles(text, [path])
        return _open_video(path, open_timeout)
    if _GLOB_CHARS & set(text):
        matches = [Path(p) for p in glob.glob(text, recursive=True)]
        return _image_files(text, matches, f"glob ({len(matches)} matches)")
    raise DetsegError("no such file, folder, glob match, URL or webcam index", text)
