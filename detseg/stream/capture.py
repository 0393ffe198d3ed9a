"""The capture thread and the frame buffer between it and the model.

File sources fill a bounded buffer and wait when it is full (back-pressure: every frame is
processed, memory stays bounded). Live sources use a one-slot buffer that always holds the
newest frame: an unread frame is replaced and counted as dropped, so the model never works
on a stale frame and latency cannot accumulate.
"""

from __future__ import annotations

import collections
import threading
import time

from detseg.stream.sources import Frame, FrameSource

__all__ = ["FrameBuffer", "FrameReader"]

_WAKE_S = 0.1  # how often a blocked producer re-checks whether the consumer stopped


class FrameBuffer:
    """Frames handed from the capture thread to the consumer.

    `keep_latest=True` makes a put replace what the consumer has not taken yet (counted in
    `dropped`); otherwise a put waits for room. `finish()` is the producer's end (optionally
    with the error that ended it), `stop()` the consumer's: it wakes a waiting producer.
    """

    def __init__(self, capacity: int, keep_latest: bool):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.keep_latest = keep_latest
        self.received = 0
        self.dropped = 0
        self._frames: collections.deque[Frame] = collections.deque()
        self._cond = threading.Condition()
        self._finished = False
        self._stopped = False
        self._error: BaseException | None = None

    def put(self, frame: Frame) -> bool:
        """Add a frame; False when the consumer has stopped (the producer should end)."""
        with self._cond:
            if not self.keep_latest:
                while len(self._frames) >= self.capacity and not self._stopped:
                    self._cond.wait(_WAKE_S)
            if self._stopped:
                return False
            if self.keep_latest and len(self._frames) >= self.capacity:
                self._frames.popleft()
                self.dropped += 1
            self._frames.append(frame)
            self.received += 1
            self._cond.notify_all()
            return True

    def get(self, timeout: float) -> Frame | None:
        """The oldest frame held; None once the producer finished and the buffer is empty.

        Re-raises the error the producer finished with; raises TimeoutError when no frame
        arrives within `timeout` seconds.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._frames and not self._finished:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no frame within {timeout:g} s")
                self._cond.wait(left)
            if self._frames:
                frame = self._frames.popleft()
                self._cond.notify_all()
                return frame
            if self._error is not None:
                raise self._error
            return None

    def finish(self, error: BaseException | None = None) -> None:
        """Producer side: no more frames (because of `error`, when given)."""
        with self._cond:
            self._finished = True
            self._error = error
            self._cond.notify_all()

    def stop(self) -> None:
        """Consumer side: take nothing more; frames still held are counted as dropped."""
        with self._cond:
            self._stopped = True
            self.dropped += len(self._frames)
            self._frames.clear()
            self._cond.notify_all()


class FrameReader(threading.Thread):
    """Reads `source` into `buffer` until its end, `max_frames`, an error or `buffer.stop()`.

    The source is closed on this thread, the one that reads it. The thread is a daemon so a
    device blocked inside a read cannot keep the process alive.
    """

    def __init__(self, source: FrameSource, buffer: FrameBuffer, max_frames: int | None = None):
        super().__init__(name=f"detseg-capture({source.name})", daemon=True)
        self.source = source
        self.buffer = buffer
        self.max_frames = max_frames

    def run(self) -> None:
        error: BaseException | None = None
        try:
            while self.max_frames is None or self.buffer.received < self.max_frames:
                frame = self.source.read()
                if frame is None or not self.buffer.put(frame):
                    break
        except BaseException as exc:  # handed to the consumer, which re-raises it
            error = exc
        finally:
            self.buffer.finish(error)
            self.source.close()
