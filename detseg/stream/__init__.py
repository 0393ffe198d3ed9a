"""Streaming inference: sources, capture, sinks and the threaded runner, for any task.

`run_stream(source, predictor)` carries whatever a task's `Predictor` returns per frame and
lets the predictor draw, record and describe it; this package knows no task (it imports
nothing from detseg.engine, detseg.tasks, detseg.heads or detseg.backbones).
"""

from detseg.stream.capture import FrameBuffer, FrameReader
from detseg.stream.outputs import ImageSink, OutputWorker, open_image_sinks
from detseg.stream.runner import Predictor, StreamSummary, run_on_source, run_stream
from detseg.stream.sinks import (
    VIDEO_CODECS,
    ImageFolderSink,
    JsonlSink,
    RateMeter,
    VideoFileSink,
    WindowSink,
    draw_fps,
    draw_text_block,
    show_unavailable_reason,
)
from detseg.stream.sources import Frame, FrameSource, ImageFiles, open_source

__all__ = [
    "VIDEO_CODECS",
    "Frame",
    "FrameBuffer",
    "FrameReader",
    "FrameSource",
    "ImageFiles",
    "ImageFolderSink",
    "ImageSink",
    "JsonlSink",
    "OutputWorker",
    "Predictor",
    "RateMeter",
    "StreamSummary",
    "VideoFileSink",
    "WindowSink",
    "draw_fps",
    "draw_text_block",
    "open_image_sinks",
    "open_source",
    "run_on_source",
    "run_stream",
    "show_unavailable_reason",
]
