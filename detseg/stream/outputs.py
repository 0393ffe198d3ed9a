"""The output side of the runner: which sinks a run writes to, and the thread that feeds them.

`OutputWorker` has the task draw each processed frame once, adds the FPS overlay for video,
hands the image to every image sink and the task's record of the result to the JSONL sink,
optionally prints a one-line description per image, and measures each frame's latency from
capture to written. It closes every sink on its way out, so outputs are finalised however
the run ends.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from detseg.errors import DetsegError
from detseg.stream.sinks import (
    VIDEO_CODECS,
    ImageFolderSink,
    JsonlSink,
    RateMeter,
    VideoFileSink,
    WindowSink,
    draw_fps,
)
from detseg.stream.sources import Frame, FrameSource, ImageFiles

__all__ = ["ImageSink", "OutputWorker", "open_image_sinks"]

ImageSink = VideoFileSink | ImageFolderSink | WindowSink
_WAKE_S = 0.1  # polling period of the worker's bounded waits


# === Opening ===


def _refuse_overwriting_inputs(source: ImageFiles, folder: Path) -> None:
    inputs = {p.resolve() for p in source.paths}
    for name in source.names:
        if (folder / name).resolve() in inputs:
            raise DetsegError(f"saving here would overwrite the input image {name}", folder)


def open_image_sinks(source: FrameSource, save: str | Path | None, show: bool) -> list[ImageSink]:
    """The sinks of annotated frames: a video file or an image folder (`save`), a window."""
    sinks: list[ImageSink] = []
    if save is not None:
        path = Path(save)
        if path.suffix.lower() in VIDEO_CODECS:
            if source.kind == "images":
                raise DetsegError("images are saved to a folder, not to a video file", path)
            sinks.append(VideoFileSink(path, source.fps))
        else:
            if source.kind != "images":
                raise DetsegError(
                    f"a {source.kind} is saved to a video file ({' or '.join(VIDEO_CODECS)})", path
                )
            if isinstance(source, ImageFiles):
                _refuse_overwriting_inputs(source, path)
            sinks.append(ImageFolderSink(path))
    if show:
        sinks.append(
            WindowSink(f"detseg: {source.name}", hold_ms=0 if source.kind == "images" else 1)
        )
    return sinks


def open_mask_sink(save: str | Path | None, paint: Callable[[Any], np.ndarray] | None) -> ImageFolderSink | None:
    """Plain colour masks beside saved images (`<save>/masks/<name>.png`), for a predictor
    that paints its results (`mask_image`); None otherwise or when saving a video."""
    if paint is None or save is None or Path(save).suffix.lower() in VIDEO_CODECS:
        return None
    return ImageFolderSink(Path(save) / "masks", suffix=".png", label="masks")


# === The output thread ===


class OutputWorker(threading.Thread):
    """Draws and writes processed frames in order, then closes every sink.

    Not a daemon: if the caller is interrupted again while closing, the process still waits
    for the video to be finalised. It ends once `close()` was called and its queue is empty.
    """

    def __init__(
        self,
        image_sinks: list[ImageSink],
        jsonl: JsonlSink | None,
        *,
        draw: Callable[[np.ndarray, Any], np.ndarray],
        record: Callable[[Any], dict[str, Any]],
        describe: Callable[[Any], str] | None,
        overlay_fps: bool,
        progress: tqdm,
        capacity: int,
        mask_sink: ImageFolderSink | None = None,
        paint: Callable[[Any], np.ndarray] | None = None,
    ):
        """`draw`, `record` and `describe` are the predictor's (`describe` None: print
        nothing per frame, else one `"<file>: <description>"` line per frame); `paint`
        (its `mask_image`) makes the images `mask_sink` writes."""
        super().__init__(name="detseg-output", daemon=False)
        self.queue: queue.Queue[tuple[Frame, Any]] = queue.Queue(capacity)
        self.image_sinks = image_sinks
        self.jsonl = jsonl
        self.draw = draw
        self.record = record
        self.describe = describe
        self.mask_sink = mask_sink
        self.paint = paint
        self.overlay_fps = overlay_fps
        self.progress = progress
        self.meter = RateMeter()
        self.latencies: list[float] = []
        self.quit = threading.Event()
        self.error: BaseException | None = None
        self._closing = threading.Event()

    def run(self) -> None:
        try:
            while True:
                try:
                    frame, result = self.queue.get(timeout=_WAKE_S)
                except queue.Empty:
                    if self._closing.is_set():
                        return
                    continue
                self._emit(frame, result)
        except BaseException as exc:  # handed to the caller's thread, which re-raises it
            self.error = exc
        finally:
            self._close_sinks()

    def _emit(self, frame: Frame, result: Any) -> None:
        if self.image_sinks:
            image = self.draw(frame.image, result)
            if self.overlay_fps:
                draw_fps(image, self.meter.tick(time.monotonic()))
            for sink in self.image_sinks:
                if sink.write(frame, image):
                    self.quit.set()
        if self.mask_sink is not None:
            self.mask_sink.write(frame, self.paint(result))
        if self.jsonl is not None:
            self.jsonl.write(frame, self.record(result))
        if self.describe is not None:
            tqdm.write(f"{frame.file}: {self.describe(result)}")  # keeps the progress bar whole
        self.latencies.append(time.monotonic() - frame.captured)
        self.progress.update(1)

    def _close_sinks(self) -> None:
        for sink in [*self.image_sinks, self.mask_sink, self.jsonl]:
            if sink is None:
                continue
            try:
                sink.close()
            except Exception as exc:  # keep closing the others; report the first failure
                self.error = self.error or exc
        self.progress.close()

    def submit(self, frame: Frame, result: Any) -> None:
        """Queue one processed frame, waiting for room; re-raises the worker's failure."""
        while True:
            if self.error is not None or not self.is_alive():
                raise self.error or RuntimeError("the output thread ended early")
            try:
                self.queue.put((frame, result), timeout=_WAKE_S)
                return
            except queue.Full:
                continue

    def close(self, timeout: float) -> None:
        """Let the worker write what is queued, finalise its outputs and end."""
        self._closing.set()
        self.join(timeout)
        if self.is_alive():
            raise RuntimeError(f"the output thread did not finish within {timeout:g} s")

    @property
    def written(self) -> int:
        return len(self.latencies)
