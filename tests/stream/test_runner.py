"""Video/webcam inference runner: outputs, batching, live frame dropping, shutdown and errors.

The predictor is a fake that finds a red square by thresholding, so every expected box is
known from how the test drew the clip; it draws, records and describes its results itself,
as a task's predictor does. Live sources are fakes whose camera is driven by the fake model,
which makes frame counts deterministic without relying on wall-clock speed.
"""

from __future__ import annotations

import functools
import http.server
import importlib.metadata
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from detseg.errors import DetsegError
from detseg.stream import Frame, FrameBuffer, run_stream
from detseg.stream.runner import _stats_ms

NAMES = ["square", "other"]
RED = (220, 30, 30)  # RGB
GREEN = (0, 255, 0)
SIDE = 24


# === Helpers: a clip with a known object, a fake predictor ===


def square_position(i: int) -> tuple[int, int]:
    """Top-left corner of the square in frame i: it moves 5 px right and 1 px down per frame,
    below the FPS overlay in the top-left corner."""
    return 8 + 5 * i, 30 + i


def square_frame(i: int, width: int = 160, height: int = 120) -> np.ndarray:
    """RGB frame i: grey background, one red SIDE x SIDE square at `square_position(i)`."""
    image = np.full((height, width, 3), 128, np.uint8)
    x, y = square_position(i)
    image[y : y + SIDE, x : x + SIDE] = RED
    return image


def write_clip(path: Path, frames: int, fps: float = 10.0) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (160, 120))
    for i in range(frames):
        writer.write(cv2.cvtColor(square_frame(i), cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def find_red_mask(image: np.ndarray) -> np.ndarray:
    return (image[..., 0] > 160) & (image[..., 1] < 100) & (image[..., 2] < 100)


def find_red(image: np.ndarray) -> dict[str, np.ndarray]:
    """The bounding box of red pixels as one detection (none when there is no red)."""
    ys, xs = np.nonzero(find_red_mask(image))
    if xs.size == 0:
        return {
            "boxes": np.zeros((0, 4), np.float32),
            "scores": np.zeros(0, np.float32),
            "labels": np.zeros(0, np.int32),
        }
    box = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    return {
        "boxes": np.array([box], np.float32),
        "scores": np.array([0.9], np.float32),
        "labels": np.array([0], np.int32),
    }


class RedFinder:
    """Fake predictor: finds the red square in every frame (or runs `infer` instead), draws
    2-px green outlines of the boxes, records boxes and class names; logs each call's size."""

    class_names = NAMES

    def __init__(self, infer=None):
        self.infer = infer or (lambda frames: [find_red(f) for f in frames])
        self.calls: list[int] = []

    def __call__(self, frames: list[np.ndarray]) -> list[dict]:
        self.calls.append(len(frames))
        return self.infer(frames)

    def draw(self, image: np.ndarray, result: dict) -> np.ndarray:
        out = image.copy()
        for x1, y1, x2, y2 in np.round(np.reshape(result["boxes"], (-1, 4))).astype(int):
            cv2.rectangle(out, (x1, y1), (x2 - 1, y2 - 1), GREEN, 2)
        return out

    def record(self, result: dict) -> dict:
        labels = np.asarray(result["labels"]).tolist()
        boxes = np.round(np.asarray(result["boxes"], np.float64), 2).tolist()
        return {"boxes": boxes, "labels": labels, "classes": [NAMES[i] for i in labels]}

    def describe(self, result: dict) -> str:
        return f"{len(result['boxes'])} found"


def read_video(path: Path) -> tuple[list[np.ndarray], float, int]:
    """All frames (RGB), the fps and the container's frame count."""
    capture = cv2.VideoCapture(str(path))
    fps, count = capture.get(cv2.CAP_PROP_FPS), int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    frames = []
    while True:
        ok, bgr = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    capture.release()
    return frames, fps, count


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def run(source, predictor, **kwargs):
    kwargs.setdefault("verbose", False)
    return run_stream(source, predictor, **kwargs)


# === Video files ===


def test_generated_clip_outputs_match_input_and_boxes_are_original_pixels(tmp_path):
    clip = write_clip(tmp_path / "clip.mp4", frames=20, fps=10.0)
    summary = run(
        clip, RedFinder(), save=tmp_path / "out" / "annotated.mp4", jsonl=tmp_path / "det.jsonl"
    )

    frames, fps, count = read_video(tmp_path / "out" / "annotated.mp4")
    assert (len(frames), count) == (20, 20)
    assert frames[0].shape == (120, 160, 3)
    assert fps == pytest.approx(10.0)
    records = read_jsonl(tmp_path / "det.jsonl")
    assert [r["frame"] for r in records] == list(range(20))
    assert [r["time"] for r in records] == pytest.approx(
        [i / 10.0 for i in range(20)]
    )  # t = i / fps
    for i, (record, frame) in enumerate(zip(records, frames, strict=True)):
        x, y = square_position(i)
        assert (record["width"], record["height"]) == (160, 120)
        assert record["labels"] == [0] and record["classes"] == ["square"]
        # mp4v blurs the square's edges by at most a pixel or two
        assert record["boxes"][0] == pytest.approx([x, y, x + SIDE, y + SIDE], abs=2)
        # the drawn outline sits on the square's border in the saved frame, its inside stays red
        top_edge = frame[y, x + 6 : x + SIDE - 6].astype(int).mean(axis=0)
        assert top_edge[1] > 170 and top_edge[0] < 110, top_edge
        assert frame[y + SIDE // 2, x + SIDE // 2, 0] > 160
    # FPS overlay: the grey top-left corner now holds the black box with white text
    corner = frames[-1][:12, :40]
    assert corner.min() < 40 and corner.max() > 200
    assert (summary.frames_read, summary.frames_processed, summary.frames_dropped) == (20, 20, 0)
    assert summary.stop_reason == "end of source"
    assert summary.outputs == {
        "video": str(tmp_path / "out" / "annotated.mp4"),
        "jsonl": str(tmp_path / "det.jsonl"),
    }


VIDEOS = ["car-detection.mp4", "bottle-detection.mp4"]


def centre_box(frames):
    """A fixed detection: the middle half of whatever frame it is given, class 1."""
    return [
        {"boxes": [[w / 4, h / 4, 3 * w / 4, 3 * h / 4]], "scores": [0.5], "labels": [1]}
        for h, w in (f.shape[:2] for f in frames)
    ]


@pytest.mark.parametrize(
    "max_frames", [12, pytest.param(None, marks=pytest.mark.slow, id="whole")], ids=str
)
@pytest.mark.parametrize("name", VIDEOS)
def test_real_clip_keeps_frame_count_size_fps_and_pixel_boxes(
    shared_data, tmp_path, name, max_frames
):
    clip = shared_data / "videos" / name
    if not clip.is_file():
        pytest.skip(f"{clip} is absent")
    source_frames = read_video(clip)[0] if max_frames is None else None
    probe = cv2.VideoCapture(str(clip))
    width, height = (
        int(probe.get(cv2.CAP_PROP_FRAME_WIDTH)),
        int(probe.get(cv2.CAP_PROP_FRAME_HEIGHT)),
    )
    fps = probe.get(cv2.CAP_PROP_FPS)
    probe.release()
    expected = 12 if max_frames else len(source_frames)  # whole clip: the frames OpenCV decodes

    summary = run(
        clip,
        RedFinder(centre_box),
        save=tmp_path / "out.mp4",
        jsonl=tmp_path / "det.jsonl",
        max_frames=max_frames,
        batch=4,
    )

    frames, out_fps, count = read_video(tmp_path / "out.mp4")
    assert (len(frames), count) == (expected, expected)
    assert frames[0].shape == (height, width, 3)
    assert out_fps == pytest.approx(fps, rel=1e-3)
    records = read_jsonl(tmp_path / "det.jsonl")
    assert [r["frame"] for r in records] == list(range(expected))
    assert records[-1]["boxes"] == [
        pytest.approx([width / 4, height / 4, 3 * width / 4, 3 * height / 4], abs=0.01)
    ]
    assert records[-1]["classes"] == ["other"]
    assert summary.stop_reason == ("max_frames" if max_frames else "end of source")
    assert (summary.frames_read, summary.frames_processed, summary.frames_dropped) == (
        expected,
        expected,
        0,
    )


def test_batches_give_the_same_records_in_order(tmp_path):
    clip = write_clip(tmp_path / "clip.mp4", frames=10)
    single, batched = RedFinder(), RedFinder()
    run(clip, single, jsonl=tmp_path / "one.jsonl")
    run(clip, batched, jsonl=tmp_path / "four.jsonl", batch=4)
    assert single.calls == [1] * 10
    assert batched.calls == [4, 4, 2]  # 10 frames = 4 + 4 + 2
    assert read_jsonl(tmp_path / "four.jsonl") == read_jsonl(tmp_path / "one.jsonl")


def test_max_frames_cuts_the_last_batch(tmp_path):
    finder = RedFinder()
    summary = run(write_clip(tmp_path / "clip.mp4", frames=10), finder, batch=4, max_frames=5)
    assert finder.calls == [4, 1]
    assert (summary.frames_read, summary.frames_processed, summary.stop_reason) == (
        5,
        5,
        "max_frames",
    )


def test_ctrl_c_finalises_the_video_with_the_frames_so_far(tmp_path):
    clip = write_clip(tmp_path / "clip.mp4", frames=20)

    def interrupted_at_sixth_call(frames):
        if len(finder.calls) == 6:
            raise KeyboardInterrupt
        return [find_red(f) for f in frames]

    finder = RedFinder(interrupted_at_sixth_call)
    summary = run(clip, finder, save=tmp_path / "out.mp4", jsonl=tmp_path / "det.jsonl")

    assert summary.stop_reason == "interrupted"
    assert summary.frames_processed == 5
    assert summary.frames_read == summary.frames_processed + summary.frames_dropped
    frames, fps, _ = read_video(tmp_path / "out.mp4")
    assert len(frames) == 5 and fps == pytest.approx(10.0)
    assert [r["frame"] for r in read_jsonl(tmp_path / "det.jsonl")] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("method", ["draw", "record"])
def test_a_failing_drawer_or_recorder_stops_the_run_with_its_error(tmp_path, method):
    finder = RedFinder()

    def broken(*args):
        raise ZeroDivisionError(f"{method} bug")

    setattr(finder, method, broken)
    start = time.monotonic()
    with pytest.raises(ZeroDivisionError, match=f"{method} bug"):
        run(
            write_clip(tmp_path / "clip.mp4", frames=20),
            finder,
            save=tmp_path / "out.mp4",
            jsonl=tmp_path / "det.jsonl",
        )
    assert time.monotonic() - start < 10


def test_a_result_count_other_than_the_frame_count_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="infer returned 0 results for 2 frames"):
        run(write_clip(tmp_path / "clip.mp4", frames=3), RedFinder(lambda frames: []), batch=2)


class _QuietFiles(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        """No request log on stderr."""


def test_a_video_served_over_http_is_read_like_a_file(tmp_path):
    write_clip(tmp_path / "clip.mp4", frames=20)
    handler = functools.partial(_QuietFiles, directory=str(tmp_path))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}/clip.mp4"
        summary = run(url, RedFinder(), jsonl=tmp_path / "det.jsonl")
        server.shutdown()
    # FFmpeg reports the frame count, so it is not live: every frame, in order, none dropped
    assert (summary.kind, summary.frames_processed, summary.frames_dropped) == ("video", 20, 0)
    assert [r["frame"] for r in read_jsonl(tmp_path / "det.jsonl")] == list(range(20))


def test_an_unreachable_stream_fails_fast_with_one_line():
    start = time.monotonic()
    with pytest.raises(
        DetsegError, match="rtsp://127.0.0.1:1/live: cannot open the stream"
    ) as info:
        run("rtsp://127.0.0.1:1/live", RedFinder(), open_timeout=3)
    assert time.monotonic() - start < 8 and "\n" not in str(info.value)


# === Images, folders and globs ===


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """Three PNGs of different sizes with the square at frame positions 0, 1, 2, and a text file."""
    folder = tmp_path / "images"
    folder.mkdir()
    for i, width in enumerate([160, 200, 120]):
        cv2.imwrite(
            str(folder / f"img{i}.png"),
            cv2.cvtColor(square_frame(i, width=width), cv2.COLOR_RGB2BGR),
        )
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.mark.parametrize("pattern", ["{folder}", "{folder}/*.png", "{folder}/**/img*.png"])
def test_image_sources_write_same_names_and_pixel_boxes(image_folder, tmp_path, pattern):
    out = tmp_path / "annotated"
    summary = run(
        pattern.format(folder=image_folder), RedFinder(), save=out, jsonl=tmp_path / "det.jsonl"
    )

    assert sorted(p.name for p in out.iterdir()) == ["img0.png", "img1.png", "img2.png"]
    for i, width in enumerate([160, 200, 120]):
        annotated = cv2.imread(str(out / f"img{i}.png"))
        assert annotated.shape == (120, width, 3)
        x, y = square_position(i)
        assert (
            tuple(annotated[y, x + SIDE // 2][::-1]) == GREEN
        )  # PNG is lossless: exact outline colour
    records = read_jsonl(tmp_path / "det.jsonl")
    assert [(r["file"], r["time"]) for r in records] == [
        ("img0.png", None),
        ("img1.png", None),
        ("img2.png", None),
    ]
    for i, record in enumerate(records):
        x, y = square_position(i)
        assert record["boxes"] == [[x, y, x + SIDE, y + SIDE]]  # lossless: exact
    assert summary.files_skipped == (
        1 if pattern == "{folder}" else 0
    )  # the folder also lists notes.txt
    assert (summary.kind, summary.frames_processed) == ("images", 3)


def test_single_image_even_with_glob_characters_in_its_name(image_folder, tmp_path):
    (image_folder / "img1.png").rename(image_folder / "shot[1].png")
    summary = run(image_folder / "shot[1].png", RedFinder(), save=tmp_path / "out")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["shot[1].png"]
    assert summary.frames_processed == 1


def test_images_print_one_line_each_and_videos_only_the_progress_bar(
    image_folder, tmp_path, capsys
):
    run(image_folder, RedFinder(), verbose=True)
    out = capsys.readouterr().out.splitlines()
    assert out[:3] == ["img0.png: 1 found", "img1.png: 1 found", "img2.png: 1 found"]
    assert out[3].startswith(f"source: {image_folder} (images)")  # then the summary

    run(write_clip(tmp_path / "clip.mp4", frames=3), RedFinder(), verbose=True)
    captured = capsys.readouterr()
    assert "found" not in captured.out and captured.out.startswith("source: ")
    assert "3/3" in captured.err  # tqdm's progress bar


def test_an_unreadable_image_is_skipped_and_reported(image_folder, tmp_path, capsys):
    (image_folder / "broken.png").write_bytes(b"\x89PNG truncated")
    summary = run(image_folder, RedFinder(), jsonl=tmp_path / "det.jsonl", verbose=True)
    assert summary.unreadable == ["broken.png"]
    assert [r["file"] for r in read_jsonl(tmp_path / "det.jsonl")] == ["img0.png", "img1.png", "img2.png"]
    assert summary.frames_processed == 3
    assert "skipped 1 unreadable image(s): broken.png" in capsys.readouterr().out


def test_saving_into_the_input_folder_is_refused(image_folder):
    with pytest.raises(DetsegError, match="overwrite the input image img0.png"):
        run(image_folder, RedFinder(), save=image_folder)


@pytest.mark.parametrize(
    ("make_source", "save", "message"),
    [
        (lambda tmp: write_clip(tmp / "clip.mp4", frames=2), "folder_out", "saved to a video file"),
        (lambda tmp: tmp / "missing.mp4", None, "no such file"),
        (lambda tmp: tmp / "nothing*.png", None, "no images"),
        (
            lambda tmp: (tmp / "notes.txt", (tmp / "notes.txt").write_text("x"))[0],
            None,
            "cannot open",
        ),
    ],
    ids=["video-to-folder", "missing-file", "empty-glob", "not-a-video"],
)
def test_bad_sources_and_outputs_are_one_line_user_errors(tmp_path, make_source, save, message):
    source = make_source(tmp_path)
    with pytest.raises(DetsegError, match=message) as info:
        run(source, RedFinder(), save=None if save is None else tmp_path / save)
    assert "\n" not in str(info.value)


def test_images_cannot_be_saved_as_a_video(image_folder, tmp_path):
    with pytest.raises(DetsegError, match="saved to a folder"):
        run(image_folder, RedFinder(), save=tmp_path / "out.mp4")


# === Live sources ===


class DrivenCamera:
    """A fake live camera whose frames are released by the fake model: each inference lets
    `per_call` new frames through (a camera `per_call` times faster than the model), then
    waits until the capture thread is waiting for the next one. After `calls` inferences the
    camera runs free, as a real one would while the runner shuts down."""

    name, kind, live, fps, length, skipped = "fake camera", "webcam", True, 25.0, None, 0
    unreadable: list[str] = []

    def __init__(self, per_call: int, calls: int, die_after: int | None = None):
        self.per_call, self.calls, self.die_after = per_call, calls, die_after
        self.permits = threading.Semaphore(1)  # the first frame is there at once
        self.reads_started = 0
        self.reads_done = 0
        self.delivered: dict[int, Frame] = {}  # id(image) -> Frame: what the model got, by identity
        self.infer_log: list[
            tuple[int, int, float, float]
        ] = []  # (index, newest index, captured, call time)
        self._cond = threading.Condition()
        self.closed = False
        self.dead = False

    def read(self) -> Frame:
        with self._cond:
            self.reads_started += 1
            self._cond.notify_all()
        if not self.permits.acquire(timeout=30):
            raise AssertionError("the fake model never released a frame")
        if self.die_after is not None and self.reads_done >= self.die_after:
            with self._cond:
                self.dead = True
                self._cond.notify_all()
            raise DetsegError(
                f"webcam stopped delivering frames after {self.reads_done}", self.name
            )
        index = self.reads_done
        self.reads_done += 1
        frame = Frame(index, square_frame(index % 10), index / self.fps, None, time.monotonic())
        self.delivered[id(frame.image)] = frame
        return frame

    def close(self) -> None:
        self.closed = True

    def infer(self, images: list[np.ndarray]) -> list[dict]:
        """The fake model: logs which frame it got, lets `per_call` frames through and waits
        until they are in the runner's buffer, then finds the square."""
        (frame,) = [self.delivered[id(image)] for image in images]
        self.infer_log.append((frame.index, self.reads_done - 1, frame.captured, time.monotonic()))
        if len(self.infer_log) >= self.calls:
            self.permits.release(10**6)
        else:
            self._release_and_wait()
        return [find_red(image) for image in images]

    def _release_and_wait(self) -> None:
        target = self.reads_started + self.per_call
        self.permits.release(self.per_call)
        with (
            self._cond
        ):  # read number `target` has started once the previous frames are in the buffer
            assert self._cond.wait_for(lambda: self.reads_started >= target or self.dead, timeout=5)


def test_live_source_keeps_only_the_newest_frame(tmp_path):
    camera = DrivenCamera(per_call=5, calls=6)
    summary = run(
        camera,
        RedFinder(camera.infer),
        max_frames=6,
        save=tmp_path / "live.mp4",
        jsonl=tmp_path / "det.jsonl",
    )

    # the camera delivers 5 frames per inference: the model sees frames 0, 5, 10, ... and
    # each is the newest frame read when its inference starts (no queue of stale frames)
    assert [index for index, _, _, _ in camera.infer_log] == [0, 5, 10, 15, 20, 25]
    assert all(index == newest for index, newest, _, _ in camera.infer_log)
    # each frame the model gets was captured during the previous inference, not before it
    for (_, _, captured, _), (_, _, _, previous_call) in zip(
        camera.infer_log[1:], camera.infer_log, strict=False
    ):
        assert captured >= previous_call
    assert summary.frames_processed == 6 and summary.stop_reason == "max_frames"
    # frames 1-4, 6-9, ..., 21-24 (5 gaps x 4 = 20) were dropped for sure; the frames the last
    # call releases may or may not be read before shutdown, depending on thread timing
    assert summary.frames_dropped >= 20
    assert summary.frames_read == summary.frames_processed + summary.frames_dropped
    assert [r["frame"] for r in read_jsonl(tmp_path / "det.jsonl")] == [0, 5, 10, 15, 20, 25]
    frames, fps, _ = read_video(tmp_path / "live.mp4")
    assert len(frames) == 6 and fps == pytest.approx(25.0)
    assert camera.closed


def test_live_source_refuses_batches():
    with pytest.raises(DetsegError, match="batch 4 applies to files"):
        run(DrivenCamera(per_call=1, calls=1), RedFinder(), batch=4)


def test_a_camera_that_dies_raises_and_the_video_is_finalised(tmp_path):
    camera = DrivenCamera(per_call=1, calls=100, die_after=4)
    with pytest.raises(DetsegError, match="stopped delivering frames after 4"):
        run(camera, RedFinder(camera.infer), save=tmp_path / "out.mp4")
    frames, _, _ = read_video(tmp_path / "out.mp4")
    assert len(frames) == len(camera.infer_log) == 4  # one frame per inference, each written


class StalledCamera:
    """Delivers two frames, then blocks in read() like a stream whose network went quiet."""

    name, kind, live, fps, length, skipped = "stalled stream", "stream", True, None, None, 0
    unreadable: list[str] = []

    def __init__(self):
        self.reads = 0
        self.release = threading.Event()

    def read(self) -> Frame | None:
        if self.reads >= 2:
            self.release.wait(30)
            return None
        self.reads += 1
        return Frame(self.reads - 1, square_frame(0), 0.0, None, time.monotonic())

    def close(self) -> None:
        self.release.set()


def test_a_stalled_stream_raises_instead_of_hanging():
    camera = StalledCamera()
    start = time.monotonic()
    try:
        with pytest.raises(DetsegError, match="no frame for 0.5 s: the stream stalled"):
            run(camera, RedFinder(), read_timeout=0.5)
    finally:
        camera.release.set()
    assert time.monotonic() - start < 10


def test_missing_webcam_fails_fast_with_one_line():
    start = time.monotonic()
    with pytest.raises(DetsegError, match="webcam 97: cannot open the camera") as info:
        run("97", RedFinder())
    assert time.monotonic() - start < 5
    assert "\n" not in str(info.value)


def test_show_without_gui_says_how_to_get_one(tmp_path):
    installed = {d.metadata["Name"].lower() for d in importlib.metadata.distributions()}
    if "opencv-python" in installed or "opencv-contrib-python" in installed:
        pytest.skip("an OpenCV with a GUI is installed")
    assert "opencv-python-headless" in installed
    start = time.monotonic()
    with pytest.raises(DetsegError, match="pip install opencv-python") as info:
        run(tmp_path / "never-opened.mp4", RedFinder(), show=True)  # fails before the source
    assert "\n" not in str(info.value) and time.monotonic() - start < 1


def test_window_quits_on_q_and_stays_on_one_thread(tmp_path, monkeypatch):
    """Headless here, so OpenCV's GUI calls are replaced by recorders; q on the third frame quits."""
    calls: list[tuple[str, int]] = []
    keys = iter([-1, -1, ord("q")])
    monkeypatch.setattr("detseg.stream.sinks.show_unavailable_reason", lambda: None)
    monkeypatch.setattr("detseg.stream.runner.show_unavailable_reason", lambda: None)
    for name in ("namedWindow", "imshow", "destroyWindow"):
        monkeypatch.setattr(
            cv2, name, lambda *args, _name=name: calls.append((_name, threading.get_ident()))
        )

    def wait_key(ms):
        calls.append(("waitKey", threading.get_ident()))
        return next(keys, -1)

    monkeypatch.setattr(cv2, "waitKey", wait_key)
    summary = run(
        write_clip(tmp_path / "clip.mp4", frames=20),
        RedFinder(),
        show=True,
        jsonl=tmp_path / "det.jsonl",
    )

    assert summary.stop_reason == "quit"
    assert [name for name, _ in calls][:4] == ["namedWindow", "imshow", "waitKey", "imshow"]
    assert [name for name, _ in calls].count("imshow") == summary.frames_processed
    assert calls[-1][0] == "destroyWindow"
    assert len({thread for _, thread in calls}) == 1 and calls[0][1] != threading.get_ident()
    assert (
        summary.frames_processed >= 3
    )  # frames already in the pipeline when q came are still written
    assert len(read_jsonl(tmp_path / "det.jsonl")) == summary.frames_processed


# === Building blocks ===


def test_stream_imports_no_task_engine_head_or_backbone():
    code = (
        "import sys, detseg.stream; print(sorted(m for m in sys.modules if m.startswith("
        "('detseg.engine', 'detseg.tasks', 'detseg.heads', 'detseg.backbones'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_latency_stats_by_hand():
    stats = _stats_ms([0.001, 0.002, 0.003, 0.004])
    # mean (1+2+3+4)/4 = 2.5 ms; p50 halfway between 2 and 3; p95 at rank 0.95*3 = 2.85 -> 3 + 0.85*1
    assert stats == pytest.approx({"mean": 2.5, "p50": 2.5, "p95": 3.85})
    assert _stats_ms([]) == {"mean": None, "p50": None, "p95": None}


def frame(i: int) -> Frame:
    return Frame(i, np.zeros((1, 1, 3), np.uint8), None, None, 0.0)


def test_latest_buffer_replaces_unread_frames_and_counts_them():
    buffer = FrameBuffer(1, keep_latest=True)
    for i in range(3):
        assert buffer.put(frame(i))
    assert buffer.get(1.0).index == 2
    assert (buffer.received, buffer.dropped) == (3, 2)
    buffer.put(frame(3))
    buffer.stop()  # the unread frame 3 is dropped too: received == taken + dropped
    assert (buffer.received, buffer.dropped) == (4, 3)


def test_bounded_buffer_keeps_order_and_waits_for_room():
    buffer = FrameBuffer(2, keep_latest=False)

    def produce():
        for i in range(5):
            buffer.put(frame(i))
        buffer.finish()

    producer = threading.Thread(target=produce)
    producer.start()
    deadline = time.monotonic() + 5
    while buffer.received < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)
    assert buffer.received == 2  # full: the producer waits instead of dropping
    got = []
    while (item := buffer.get(5.0)) is not None:
        got.append(item.index)
    producer.join(5)
    assert got == [0, 1, 2, 3, 4] and buffer.dropped == 0


def test_stop_wakes_a_waiting_producer():
    buffer = FrameBuffer(1, keep_latest=False)
    buffer.put(frame(0))
    result = []
    producer = threading.Thread(target=lambda: result.append(buffer.put(frame(1))))
    producer.start()
    buffer.stop()
    producer.join(2)
    assert result == [False] and not producer.is_alive()


def test_producer_error_reaches_the_consumer_after_the_frames():
    buffer = FrameBuffer(4, keep_latest=False)
    buffer.put(frame(0))
    buffer.finish(DetsegError("camera unplugged"))
    assert buffer.get(1.0).index == 0
    with pytest.raises(DetsegError, match="camera unplugged"):
        buffer.get(1.0)
