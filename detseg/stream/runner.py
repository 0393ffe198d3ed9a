"""Low-latency inference over images, folders, globs, video files, streams and webcams.

`run_stream(source, predictor)` runs any task's `Predictor` in three stages at once:

    capture thread --FrameBuffer--> caller's thread: predictor --queue--> output thread
    (decode, RGB)                   (the compiled model,                  (the task's drawing,
                                     `batch` frames per call)              FPS overlay, outputs)

The runner knows no task: what a result is, how it is drawn, written to JSONL and described
in one line is the predictor's business.

File sources go through a bounded buffer (every frame, in order, with back-pressure); live
sources through a one-slot buffer holding the newest frame (stale frames are dropped and
counted). Every wait is bounded, outputs are finalised on every exit (end of source,
`max_frames`, Ctrl-C, a window closed with q/Esc, or an error), and the run ends with a
`StreamSummary`: frames read / processed / dropped, latency percentiles and end-to-end fps.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from detseg.errors import DetsegError
from detseg.stream.capture import FrameBuffer, FrameReader
from detseg.stream.outputs import OutputWorker, open_image_sinks, open_mask_sink
from detseg.stream.sinks import JsonlSink, show_unavailable_reason
from detseg.stream.sources import Frame, FrameSource, open_source

__all__ = ["Predictor", "StreamSummary", "run_on_source", "run_stream"]


class Predictor(Protocol):
    """What the runner needs from a task: a model over frames, and how its results are shown.

    `__call__` takes RGB uint8 frames (any size) and returns one result per frame; `draw`
    returns an annotated RGB copy of a frame; `record` gives the JSON-ready fields of the
    frame's JSONL line; `describe` a short line such as "3 RBC, 1 WBC" or "cat 0.91".
    A predictor may also have `mask_image(result)`: an RGB image saved as
    `<save>/masks/<name>.png` beside each saved image (a segmenter's colour mask).
    """

    class_names: Sequence[str]

    def __call__(self, images: list[np.ndarray]) -> list[Any]: ...

    def draw(self, image: np.ndarray, result: Any) -> np.ndarray: ...

    def record(self, result: Any) -> dict[str, Any]: ...

    def describe(self, result: Any) -> str: ...


_READER_JOIN_S = 1.0  # a live reader blocked in a device read is abandoned (daemon) after this
_OUTPUT_CLOSE_TIMEOUT_S = 60.0  # the output thread's time to write what is queued and finalise


# === Summary ===


def _stats_ms(seconds: Sequence[float]) -> dict[str, float | None]:
    """Mean, median and 95th percentile (linear interpolation) in milliseconds."""
    if not seconds:
        return {"mean": None, "p50": None, "p95": None}
    ms = np.asarray(seconds, np.float64) * 1000.0
    return {
        "mean": float(ms.mean()),
        "p50": float(np.percentile(ms, 50)),
        "p95": float(np.percentile(ms, 95)),
    }


@dataclass(frozen=True)
class StreamSummary:
    """What a run did. `frames_read == frames_processed + frames_dropped` always holds.

    `latency_ms` runs from the moment a frame was read to the moment its outputs were
    written; `infer_ms` is the model's time per frame (a batch's time over its size); both
    give mean/p50/p95 (None when no frame was processed). `fps` is frames processed over
    `wall_s`. `stop_reason` is "end of source", "max_frames", "interrupted" or "quit".
    """

    source: str
    kind: str
    frames_read: int
    frames_processed: int
    frames_dropped: int
    files_skipped: int
    unreadable: list[str]
    stop_reason: str
    wall_s: float
    fps: float
    latency_ms: dict[str, float | None]
    infer_ms: dict[str, float | None]
    outputs: dict[str, str]

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready copy."""
        return asdict(self)

    def __str__(self) -> str:
        def ms(stats: dict[str, float | None]) -> str:
            if stats["mean"] is None:
                return "n/a"
            return ", ".join(f"{key} {value:.1f}" for key, value in stats.items())

        lines = [
            f"source: {self.source} ({self.kind})",
            f"frames: {self.frames_read} read, {self.frames_processed} processed, "
            f"{self.frames_dropped} dropped"
            + (f"; {self.files_skipped} non-image entries skipped" if self.files_skipped else ""),
            f"latency ms (read -> written): {ms(self.latency_ms)}",
            f"model ms per frame: {ms(self.infer_ms)}",
            f"{self.fps:.1f} fps end to end over {self.wall_s:.2f} s; stopped: {self.stop_reason}",
        ]
        if self.unreadable:
            shown = ", ".join(self.unreadable[:3]) + (" ..." if len(self.unreadable) > 3 else "")
            lines.append(f"skipped {len(self.unreadable)} unreadable image(s): {shown}")
        lines += [f"{what}: {where}" for what, where in self.outputs.items()]
        return "\n".join(lines)


# === Inputs and outputs ===


def _check_options(batch: int, max_frames: int | None) -> None:
    if not isinstance(batch, int) or batch < 1:
        raise DetsegError(f"batch must be an integer >= 1, got {batch!r}")
    if max_frames is not None and (not isinstance(max_frames, int) or max_frames < 1):
        raise DetsegError(f"max_frames must be an integer >= 1, got {max_frames!r}")


def _one_per_frame(results: Any, frames: list[Frame]) -> list[Any]:
    """The predictor's results, checked to be a list with one result per frame."""
    if not isinstance(results, (list, tuple)) or len(results) != len(frames):
        got = len(results) if isinstance(results, (list, tuple)) else type(results).__name__
        raise ValueError(f"infer returned {got} results for {len(frames)} frames")
    return list(results)


def _expected_frames(source: FrameSource, max_frames: int | None) -> int | None:
    """The progress bar's total: frames a file source will give, None for live sources."""
    if source.live or source.length is None:
        return None if source.live else max_frames
    return source.length if max_frames is None else min(source.length, max_frames)


def _take(buffer: FrameBuffer, count: int, timeout: float, source: FrameSource) -> list[Frame]:
    """Up to `count` frames (fewer at the end of the source), each awaited at most `timeout` s."""
    frames: list[Frame] = []
    while len(frames) < count:
        try:
            frame = buffer.get(timeout)
        except TimeoutError:
            raise DetsegError(
                f"no frame for {timeout:g} s: the {source.kind} stalled", source.name
            ) from None
        if frame is None:
            break
        frames.append(frame)
    return frames


# === The runner ===


@dataclass
class _Loop:
    """The inference loop's counters, kept outside it so an interrupted loop leaves them."""

    taken: int = 0
    infer_s: list[float] = field(default_factory=list)
    stop_reason: str = "end of source"


def _infer_loop(
    state: _Loop,
    buffer: FrameBuffer,
    worker: OutputWorker,
    predictor: Predictor,
    source: FrameSource,
    batch: int,
    max_frames: int | None,
    read_timeout: float,
) -> None:
    """Take frames, run the model on them, queue the results, until the source or the user stops."""
    while True:
        if worker.quit.is_set():
            state.stop_reason = "quit"
            return
        left = None if max_frames is None else max_frames - state.taken
        if left == 0:
            state.stop_reason = "max_frames"
            return
        frames = _take(
            buffer, 1 if source.live else min(batch, left or batch), read_timeout, source
        )
        if not frames:
            return
        state.taken += len(frames)
        tick = time.perf_counter()
        results = predictor([frame.image for frame in frames])
        state.infer_s += [(time.perf_counter() - tick) / len(frames)] * len(frames)
        for frame, result in zip(frames, _one_per_frame(results, frames), strict=True):
            worker.submit(frame, result)


def run_stream(
    source: str | int | Path | FrameSource,
    predictor: Predictor,
    *,
    save: str | Path | None = None,
    show: bool = False,
    jsonl: str | Path | None = None,
    batch: int = 1,
    max_frames: int | None = None,
    verbose: bool = True,
    open_timeout: float = 10.0,
    read_timeout: float = 10.0,
) -> StreamSummary:
    """Run `predictor` over every frame of `source` (files) or the newest frames (live sources).

    `source` is an image, folder, glob, video file, URL, webcam index ("0") or an opened
    `FrameSource`. `predictor` (any task's `Predictor`) runs on the caller's thread and draws
    the frames for `save`/`show` on the output thread. `save` is a .mp4/.avi file for videos,
    streams and webcams (the source's fps and size, an FPS overlay; a live source's video
    holds the processed frames only) or a folder for images (same names); `show` opens a
    window (q or Esc stops); `jsonl` writes one line per processed frame (`JsonlSink`).
    `batch` frames go to each predictor call (files only); `max_frames` stops after that many
    processed frames. `verbose` shows a progress bar for files, prints one line per image
    ("<file>: <description>") and the summary. Raises DetsegError for bad input, a device
    that cannot be opened within `open_timeout` s, or a source that gives no frame for
    `read_timeout` s; Ctrl-C ends the run normally (stop_reason "interrupted") with every
    output finalised.
    """
    _check_options(batch, max_frames)
    if show and (reason := show_unavailable_reason()):
        raise DetsegError(reason)
    if isinstance(source, (str, int, Path)):
        source = open_source(source, open_timeout=open_timeout)
    try:
        if source.live and batch > 1:
            raise DetsegError(
                f"batch {batch} applies to files; a {source.kind} runs the newest frame each time"
            )
        image_sinks = open_image_sinks(source, save, show)
        paint = getattr(predictor, "mask_image", None)
        mask_sink = open_mask_sink(save, paint)
        jsonl_sink = JsonlSink(jsonl) if jsonl is not None else None
    except BaseException:
        source.close()
        raise
    total = _expected_frames(source, max_frames)
    progress = tqdm(total=total, unit="frame", disable=not verbose or source.live, file=sys.stderr)
    capacity = max(4, 2 * batch)
    buffer = FrameBuffer(1 if source.live else capacity, keep_latest=source.live)
    reader = FrameReader(source, buffer, None if source.live else max_frames)
    worker = OutputWorker(
        image_sinks,
        jsonl_sink,
        draw=predictor.draw,
        record=predictor.record,
        describe=predictor.describe if verbose and source.kind == "images" else None,
        overlay_fps=source.kind != "images",
        progress=progress,
        capacity=capacity,
        mask_sink=mask_sink,
        paint=paint,
    )

    start = time.monotonic()
    worker.start()
    reader.start()
    state = _Loop()
    error: BaseException | None = None
    try:
        _infer_loop(state, buffer, worker, predictor, source, batch, max_frames, read_timeout)
    except KeyboardInterrupt:
        state.stop_reason = "interrupted"
    except BaseException as exc:
        error = exc
    buffer.stop()
    worker.close(_OUTPUT_CLOSE_TIMEOUT_S)
    reader.join(_READER_JOIN_S)
    wall = time.monotonic() - start
    if error is not None:
        raise error
    if worker.error is not None:
        raise worker.error

    summary = StreamSummary(
        source=source.name,
        kind=source.kind,
        frames_read=buffer.received,
        frames_processed=worker.written,
        frames_dropped=buffer.dropped + state.taken - worker.written,
        files_skipped=source.skipped,
        unreadable=list(source.unreadable),
        stop_reason=state.stop_reason,
        wall_s=wall,
        fps=worker.written / wall if wall > 0 else 0.0,
        latency_ms=_stats_ms(worker.latencies),
        infer_ms=_stats_ms(state.infer_s),
        outputs={
            sink.label: sink.target
            for sink in [*image_sinks, mask_sink, jsonl_sink]
            if sink is not None
        },
    )
    if verbose:
        print(summary)
    return summary


def run_on_source(
    build: Callable[[], Predictor],
    source: str | int | Path,
    *,
    save: str | Path | None = None,
    show: bool = False,
    jsonl: str | Path | None = None,
    batch: int = 1,
    max_frames: int | None = None,
) -> StreamSummary:
    """Check `show`, open `source`, then `build()` the (slow to load) predictor and run the
    stream; a camera that cannot open fails before any model loads, and the source is closed
    if building fails."""
    if show and (reason := show_unavailable_reason()):
        raise DetsegError(reason)
    opened = open_source(source)
    try:
        predictor = build()
    except BaseException:
        opened.close()
        raise
    return run_stream(
        opened, predictor, save=save, show=show, jsonl=jsonl, batch=batch, max_frames=max_frames
    )
