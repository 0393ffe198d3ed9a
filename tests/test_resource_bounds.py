"""Resource bounds (slow): a 20,000-image COCO file parses in seconds with memory proportional
to its annotations and no image opened; a 10,000-frame video through `detseg predict` keeps a
flat resident set. The figures go to benchmarks/BENCHMARKS.md ("Resource bounds"); run with
`pytest tests/test_resource_bounds.py -m slow -s` to print them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest

from detseg.data import load_coco

PER_IMAGE = 5  # annotations per generated image
MB = 1024 * 1024


def write_coco(path: Path, images: int, seed: int = 0) -> Path:
    """A COCO instances file of `images` 640x480 images (whose files do not exist), PER_IMAGE
    boxes each over 80 categories."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 400, (images * PER_IMAGE, 2)).round(2)
    wh = rng.uniform(4, 200, (images * PER_IMAGE, 2)).round(2)
    cats = rng.integers(1, 81, images * PER_IMAGE)
    doc = {
        "images": [{"id": i + 1, "file_name": f"{i:012d}.jpg", "width": 640, "height": 480} for i in range(images)],
        "annotations": [
            {
                "id": n + 1,
                "image_id": n // PER_IMAGE + 1,
                "category_id": int(cats[n]),
                "bbox": [*xy[n].tolist(), *wh[n].tolist()],
                "area": float(wh[n, 0] * wh[n, 1]),
                "iscrowd": 0,
            }
            for n in range(images * PER_IMAGE)
        ],
        "categories": [{"id": c, "name": f"class{c}"} for c in range(1, 81)],
    }
    path.write_text(json.dumps(doc))
    return path


def parse(path: Path) -> tuple[float, float, int]:
    """(wall s, CPU s, peak traced MB) of load_coco without opening images; the timing pass is
    not traced (tracemalloc slows allocation-heavy code)."""
    wall, cpu = time.perf_counter(), time.process_time()
    dataset = load_coco(path, check_images=False)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert sum(len(s.boxes) for s in dataset.samples) == len(dataset.samples) * PER_IMAGE
    del dataset
    tracemalloc.start()
    load_coco(path, check_images=False)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return wall, cpu, peak / MB


@pytest.mark.slow
def test_a_20000_image_coco_file_parses_in_seconds_in_memory_proportional_to_annotations(tmp_path):
    small = parse(write_coco(tmp_path / "small.json", 4_000))
    large = parse(write_coco(tmp_path / "large.json", 20_000))
    size_mb = (tmp_path / "large.json").stat().st_size / MB
    print(
        f"\nCOCO 20,000 images / 100,000 boxes ({size_mb:.1f} MB JSON): {large[0]:.2f} s wall, "
        f"{large[1]:.2f} s CPU, peak {large[2]:.0f} MB traced ({large[2] * MB / 100_000:.0f} B per box); "
        f"4,000 images: {small[1]:.2f} s CPU, peak {small[2]:.0f} MB"
    )
    assert large[1] < 10  # seconds of CPU (the wall clock counts other jobs)
    # 5x the annotations -> about 5x the memory: nothing grows faster than the file
    assert 4.0 < large[2] / small[2] < 6.0
    assert large[2] * MB / 100_000 < 4_000  # bytes per box, the parsed JSON included


def write_video(path: Path, frames: int, side: int = 64) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (side, side))
    rng = np.random.default_rng(0)
    background = rng.integers(0, 255, (side, side, 3), dtype=np.uint8)
    for i in range(frames):
        frame = background.copy()
        x = i % (side - 16)
        frame[20:36, x : x + 16] = (30, 30, 220)  # a red square moving right (BGR)
        writer.write(frame)
    writer.release()
    return path


def tiny_detector_run(folder: Path) -> Path:
    """A run folder with an untrained 64 px YOLO detector (best.keras) and its config.yaml."""
    from detseg.config import config_from_dict, dump_config
    from detseg.heads.yolo import build_yolo

    anchors = [[8, 8], [16, 16], [24, 24], [32, 32], [48, 48], [64, 64]]
    cfg = config_from_dict(
        {
            "data": {"names": ["square", "circle", "triangle"]},
            "model": {
                "backbone": "darknet_tiny",
                "backbone_width": 0.25,
                "input_size": 64,
                "yolo": {"levels": ["P4", "P5"], "width": 0.25, "anchors": anchors},
            },
        }
    )
    folder.mkdir(parents=True, exist_ok=True)
    build_yolo(cfg.model, 3, anchors, cfg.predict).save(folder / "best.keras")
    dump_config(cfg, folder / "config.yaml")
    return folder


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        line = next(line for line in f if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_10000_frame_video_keeps_a_flat_resident_set(tmp_path):
    frames = 10_000
    clip = write_video(tmp_path / "clip.mp4", frames)
    run = tiny_detector_run(tmp_path / "run")
    jsonl = tmp_path / "out.jsonl"
    command = [sys.executable, "-m", "detseg", "-q", "predict", str(run), "--source", str(clip)]
    command += ["--save", str(tmp_path / "out.mp4"), "--jsonl", str(jsonl)]
    # The user's command as it runs (on the tuned allocator: it re-executes as the same pid).
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    samples: dict[int, float] = {}  # frames written -> RSS MB
    done, offset, start = 0, 0, time.monotonic()
    try:
        while proc.poll() is None:
            assert time.monotonic() - start < 900, "predict took over 15 minutes"
            if jsonl.is_file():
                with jsonl.open("rb") as f:  # count the new lines only
                    f.seek(offset)
                    chunk = f.read()
                offset += len(chunk)
                done += chunk.count(b"\n")
            try:
                samples[done] = rss_mb(proc.pid)
            except (FileNotFoundError, ProcessLookupError, StopIteration):
                break  # it has just exited
            time.sleep(0.1)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, proc.stderr.read()
    assert sum(1 for _ in jsonl.open()) == frames
    at_1000 = samples[min(n for n in samples if n >= 1_000)]
    last = max(samples)  # the last sample before the process exited
    growth = samples[last] - at_1000
    print(
        f"\nvideo 10,000 frames 64x64 through detseg predict: RSS {at_1000:.0f} MB at frame "
        f"{min(n for n in samples if n >= 1_000)}, {samples[last]:.0f} MB at frame {last} "
        f"(growth {growth:+.1f} MB), peak {max(samples.values()):.0f} MB, {time.monotonic() - start:.0f} s wall"
    )
    assert last >= 9_500, f"the last RSS sample came at frame {last}"
    assert growth < 50
    assert os.path.getsize(tmp_path / "out.mp4") > 0
