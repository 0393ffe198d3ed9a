"""detseg side by side with Ultralytics (YOLOv8n) and KerasCV (YOLOV8Detector, xs), one run.

Every tool runs on the same BCCD images and the same clip, in its own process (one at a time,
so none shares the cores with another): detseg in this environment under each Keras backend,
the peers in `.venv-peers` (`make bench-peers` creates it). Models are built from their
architecture definitions with random weights; nothing is downloaded. Sections:

1. training img/s at each (size, batch), augmentation on, median interval between batch ends
   after 3 warm-up batches; parameters and GFLOPs (2 x multiply-accumulates) beside it.
   detseg: configs/bccd_yolov3_peer.yaml (YOLOv8n's arithmetic), `fit` over its loader.
2. inference, batch 1, end to end (preprocess + model + decode + NMS, boxes in the original
   pixels of a 640x480 BCCD image), and video fps over the first frames of the clip.
   detseg on Keras, on onnxruntime (the float export `detseg predict` caches) and int8.
3. COCO evaluation time of detseg, pycocotools and faster-coco-eval on one generated set.
4. `--sections accuracy`: each tool trains from scratch on BCCD for `--minutes` of wall clock at 416 px,
   then all are scored on the test split by detseg's evaluator (pycocotools-identical);
   detseg also through its float32 and int8 ONNX exports (the int8 AP beside float32's, and
   each export's median ms per test image end to end). `--rescore` scores the models and
   detections an earlier accuracy run left in `--accuracy-dir` again, without training.
Ultralytics runs at its CPU default (cores - 1 torch threads) and at detseg's thread count.

    .venv/bin/python benchmarks/bench_peers.py [--quick] [--json OUT] [--peers auto|none]
        [--backends tensorflow jax] [--sections speed coco accuracy] [--minutes 15] [--rescore]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(HERE / "peers")]  # bench_coco_eval; the workers' shared helpers
from common import BatchClock, emit, median_ms  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
BCCD = SHARED / "bccd"
VIDEO = SHARED / "videos" / "car-detection.mp4"
PEERS_PYTHON = REPO / ".venv-peers" / "bin" / "python"
PEER_CONFIG = REPO / "configs" / "bccd_yolov3_peer.yaml"
ACCURACY_CONFIG = REPO / "configs" / "bccd_yolov3.yaml"
NAMES = ["RBC", "WBC", "Platelets"]
SCORE_THR, IOU_THR = 0.25, 0.45  # every tool's predict defaults

FULL = {"train": [[320, 8], [320, 16], [416, 8], [416, 16]], "infer": [416, 640], "video": [416, 640],
        "steps": 12, "repeats": 20, "frames": 150, "coco_images": 5000}  # fmt: skip
QUICK = {"train": [[128, 4]], "infer": [128], "video": [128], "steps": 2, "repeats": 3, "frames": 6, "coco_images": 50}


# === detseg (this environment) ===


def _detseg_config(size: int, batch: int = 1, config: Path = PEER_CONFIG):
    from detseg.config import load_config

    overrides = {"model.input_size": size, "train.batch_size": batch, "data.root": str(BCCD), "name": "bench_peers"}
    return load_config(config, overrides)


def _detseg_model(cfg, train_ds):
    from detseg.flops import gflops
    from detseg.heads import build_yolo
    from detseg.tasks.detect import anchor_list, fit_config_anchors

    anchors = anchor_list(fit_config_anchors(cfg, dataset=train_ds))
    model = build_yolo(cfg.model, len(NAMES), anchors, cfg.predict)
    return model, {"params": int(model.count_params()), "gflops": round(gflops(model), 2)}


def detseg_train(size: int, batch: int, steps: int, eager: bool = False) -> dict:
    """Training img/s of `fit` over the config's loader; `eager` skips graph compilation (the
    in-process test's tiny run, whose figure then measures nothing but that it runs)."""
    import keras

    from detseg.data import load_split, training_loader

    cfg = _detseg_config(size, batch)
    train_ds = load_split(cfg.data, "train")
    model, facts = _detseg_model(cfg, train_ds)
    model.compile(optimizer=keras.optimizers.AdamW(cfg.train.lr), run_eagerly=eager)
    loader = training_loader(cfg, train_ds, model.make_target_encoder())
    clock = BatchClock(batch)
    wanted = steps + 4
    callback = keras.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: clock.tick())
    epochs = -(-wanted // len(loader))
    model.fit(loader, epochs=epochs, steps_per_epoch=min(wanted, len(loader)), shuffle=False, verbose=0, callbacks=[callback])
    return {"section": "train", "size": size, "batch": batch, "threads": os.cpu_count(),
            "img_s": clock.images_per_second(), "timed_batches": clock.timed, **facts}  # fmt: skip


def _detseg_run(size: int, folder: Path) -> tuple[Path, Any, dict]:
    """A run folder holding an untrained detector at `size` (best.keras + config.yaml)."""
    from detseg.config import dump_config
    from detseg.data import load_split
    from detseg.tasks import task_for

    cfg = _detseg_config(size)
    train_ds = load_split(cfg.data, "train")
    cfg = task_for(cfg).prepare(cfg, train_ds)
    model, facts = _detseg_model(cfg, train_ds)
    run = folder / f"run_{size}"
    run.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, run / "config.yaml")
    model.save(run / "best.keras")
    return run, model, facts


def detseg_infer(size: int, repeats: int, folder: Path, onnx: bool, int8: bool = True) -> list[dict]:
    """Batch-1 end-to-end milliseconds on Keras, and on onnxruntime (float, and int8 with
    `int8`) where the exporter runs (TensorFlow backend, onnx extra)."""
    import time

    from detseg.data import letterbox, read_image
    from detseg.engine.exported import open_exported
    from detseg.heads import Detector, host_nms
    from detseg.tasks.detect import ExportedDetector

    run, model, facts = _detseg_run(size, folder)
    frame = read_image(BCCD / "JPEGImages" / "BloodImage_00001.jpg")
    detector = Detector(model, score_thr=SCORE_THR, iou_thr=IOU_THR)
    candidates = detector.candidates(letterbox(frame, size)[0][None])
    post = median_ms(lambda: host_nms(*candidates, SCORE_THR, IOU_THR, model.max_det), repeats)
    rows = [{"section": "infer", "runtime": "keras", "size": size, "ms": median_ms(lambda: detector([frame]), repeats),
             "postprocess_ms": post, **facts}]  # fmt: skip
    if onnx:
        from detseg.config import load_config
        from detseg.engine.export import export
        from detseg.engine.onnx_cache import cached_onnx
        from detseg.tasks import task_for

        cfg = load_config(run / "config.yaml")
        start = time.perf_counter()
        graphs = {"onnxruntime": cached_onnx(run / "best.keras", cfg, task_for(cfg))}
        export_s = time.perf_counter() - start
        if int8:
            graphs["onnxruntime int8"] = export(run, "onnx", int8=True)
        for runtime, path in graphs.items():
            runner, metadata = open_exported(path)
            exported = ExportedDetector(runner, metadata, path)
            rows.append({"section": "infer", "runtime": runtime, "size": size, "ms": median_ms(lambda e=exported: e([frame]), repeats),
                         "export_s": export_s if runtime == "onnxruntime" else None, **facts})  # fmt: skip
    return rows


def detseg_video(size: int, frames: int, folder: Path, runtimes: list[str]) -> list[dict]:
    from detseg.engine.predict import predict

    run = folder / f"run_{size}"
    if not run.exists():
        _detseg_run(size, folder)
    rows = []
    for runtime in runtimes:
        predict(run, source=str(VIDEO), max_frames=1, overrides={"predict.runtime": runtime})  # export / trace first
        summary = predict(run, source=str(VIDEO), max_frames=frames, overrides={"predict.runtime": runtime})
        rows.append({"section": "video", "runtime": runtime, "size": size, "frames": summary.frames_processed, "fps": summary.fps})
    return rows


def detseg_rows(spec: dict) -> list[dict]:
    """Every detseg row of `spec` under the backend this process runs (`spec["runtimes"]`, when
    given, limits the inference runtimes: the in-process test measures fewer)."""
    import keras

    from detseg.engine.onnx_cache import onnx_runtime_missing
    from detseg.quiet import start_backend_quietly

    start_backend_quietly()
    onnx = onnx_runtime_missing() is None
    runtimes = spec.get("runtimes", ["keras", "onnxruntime", "onnxruntime int8"] if onnx else ["keras"])
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        for size, batch in spec["train"]:
            rows.append(detseg_train(size, batch, spec["steps"], spec.get("eager", False)))
        for size in spec["infer"]:
            rows += detseg_infer(size, spec["repeats"], folder, "onnxruntime" in runtimes, "onnxruntime int8" in runtimes)
        for size in spec["video"]:
            rows += detseg_video(size, spec["frames"], folder, [r for r in runtimes if r in ("keras", "onnxruntime")])
    backend = keras.backend.backend()
    return [{"tool": "detseg", "backend": backend, **row} for row in rows]


# === Processes ===


def _last_json_line(text: str) -> list[dict]:
    lines = [line for line in text.splitlines() if line.startswith("[")]
    if not lines:
        raise RuntimeError("the worker printed no result line")
    return json.loads(lines[-1])


def run_worker(command: list[str], env: dict[str, str] | None = None) -> list[dict]:
    """Run one worker process to the end and return its rows (its output is shown on failure)."""
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=HERE / "peers")
    if done.returncode:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        raise RuntimeError(f"{' '.join(command[:2])} failed with exit {done.returncode}")
    return _last_json_line(done.stdout)


def yolo_layout(folder: Path) -> Path:
    """BCCD in the YOLO layout Ultralytics reads (images/<split>, labels/<split>) and its data
    YAML; the images are links to the shared copy."""
    from detseg.config import DataConfig
    from detseg.data import load_split
    from detseg.data.yolo import write_yolo

    data = DataConfig(format="voc", root=str(BCCD), names=NAMES, train={"split": "train"}, val={"split": "val"}, test={"split": "test"})
    for split in ("train", "val", "test"):
        dataset = load_split(data, split)
        images = folder / "images" / split
        images.mkdir(parents=True, exist_ok=True)
        for sample in dataset.samples:
            link = images / Path(sample.image_path).name
            if not link.exists():
                link.symlink_to(sample.image_path)
        write_yolo(dataset, folder / "labels" / split, image_dir=Path(dataset.samples[0].image_path).parent)
    names = "".join(f"  {i}: {name}\n" for i, name in enumerate(NAMES))
    yaml = folder / "data.yaml"
    yaml.write_text(f"path: {folder}\ntrain: images/train\nval: images/val\ntest: images/test\nnames:\n{names}")
    return yaml


def peer_rows(spec: dict, folder: Path, threads: int, tools: tuple[str, ...]) -> list[dict]:
    """Of `tools`: Ultralytics at its default threads and at `threads`, KerasCV at `threads`."""
    common = {**spec, "names": NAMES, "score_thr": SCORE_THR, "iou_thr": IOU_THR, "workers": threads,
              "image": str(BCCD / "JPEGImages" / "BloodImage_00001.jpg"), "video_path": str(VIDEO),
              "bccd": str(BCCD), "work": str(folder / "ultralytics"), "data_yaml": str(yolo_layout(folder / "bccd_yolo"))}  # fmt: skip
    rows = []
    if "ultralytics" in tools:
        for ultra_threads in (0, threads):
            rows += run_worker([str(PEERS_PYTHON), "ultralytics_worker.py", "--spec", json.dumps({**common, "threads": ultra_threads})])
    if "kerascv" in tools:
        rows += run_worker([str(PEERS_PYTHON), "kerascv_worker.py", "--spec", json.dumps({**common, "threads": threads})])
    return rows


# === COCO evaluation ===


def coco_rows(images: int) -> list[dict]:
    from bench_coco_eval import make_dataset, time_detseg, time_faster_coco_eval, time_pycocotools

    gt, results = make_dataset(images, 0)
    runs = {"detseg": time_detseg(gt, results), "faster-coco-eval": time_faster_coco_eval(gt, results), "pycocotools": time_pycocotools(gt, results)}
    reference = runs["pycocotools"][1]
    return [{"tool": tool, "section": "coco", "images": images, "seconds": timer.wall, "max_stats_diff": float(np.abs(stats - reference).max())}
            for tool, (timer, stats) in runs.items()]  # fmt: skip


# === Accuracy at equal time ===


PEER_TOOLS = ("ultralytics", "kerascv")


def accuracy_rows(minutes: float, folder: Path, tools: tuple[str, ...], threads: int, rescore: bool = False) -> list[dict]:
    """Each tool trains `minutes` on BCCD at 416 px; the test split is scored by detseg's
    evaluator: detseg's run through `detseg evaluate --split test`, its float32 and int8 ONNX
    exports and each peer's detections against the same split written as COCO ground truth.
    Everything stays in `folder` (the trained models, the detections); with `rescore` the
    training steps are skipped and what an earlier run left there is scored. `tools`: the peers."""
    from detseg.config import load_config
    from detseg.data import load_split
    from detseg.data.coco import write_coco

    folder = folder.resolve()  # the peers' workers run in benchmarks/peers
    if rescore:
        left = [folder / "detseg" / "best.keras", *(folder / f"{tool}_test.json" for tool in tools)]
        if missing := [str(path) for path in left if not path.is_file()]:
            sys.exit(f"bench_peers: --rescore: {', '.join(missing)} not found (run the accuracy section first)")
    folder.mkdir(parents=True, exist_ok=True)
    test = load_split(load_config(ACCURACY_CONFIG, {"data.root": str(BCCD)}).data, "test")
    gt = json.loads(write_coco(test, folder / "bccd_test.json").read_text())
    detseg_cli = [sys.executable, "-m", "detseg", "-q"]
    if not rescore:
        subprocess.run(
            [*detseg_cli, "train", str(ACCURACY_CONFIG), "--set", f"data.root={BCCD}", "--set", f"train.time_limit={minutes}",
             "--set", f"out_dir={folder}", "--set", "name=detseg"], cwd=REPO, check=True,
        )  # fmt: skip
        for tool in tools:
            _train_peer(tool, minutes, folder, test, gt, threads)
    metrics = folder / "detseg_test.json"
    subprocess.run([*detseg_cli, "evaluate", str(folder / "detseg"), "--split", "test", "--json", str(metrics)], cwd=REPO, check=True)
    stats = {"detseg": json.loads(metrics.read_text())["stats"]}
    latency = export_stats(folder / "detseg", test, gt, stats)
    for tool in tools:
        stats[tool] = _scored(gt, json.loads((folder / f"{tool}_test.json").read_text()))
    return [{"tool": tool, "section": "accuracy", "minutes": minutes, "AP": v[0], "AP50": v[1], "AP75": v[2],
             "ms per image": latency.get(tool)} for tool, v in stats.items()]  # fmt: skip


def _train_peer(tool: str, minutes: float, folder: Path, test, gt: dict, threads: int) -> None:
    """One peer's worker trains `minutes` and writes its test detections to folder/<tool>_test.json."""
    ids = {image["file_name"]: image["id"] for image in gt["images"]}
    spec = {"names": NAMES, "bccd": str(BCCD), "threads": threads, "workers": threads, "minutes": minutes,
            "test_images": [[ids[Path(s.image_path).name], str(s.image_path)] for s in test.samples],
            "detections": str(folder / f"{tool}_test.json")}  # fmt: skip
    if tool == "ultralytics":
        spec.update(data_yaml=str(yolo_layout(folder / "bccd_yolo")), work=str(folder / "ultralytics"))
    run_worker([str(PEERS_PYTHON), f"{tool}_worker.py", "--spec", json.dumps(spec)])


def _scored(gt: dict, results: list[dict]) -> list[float]:
    from detseg.metrics import evaluate_coco_files

    return evaluate_coco_files(gt, results)["stats"]


def export_stats(run: Path, test, gt: dict, stats: dict[str, list[float]]) -> dict[str, float]:
    """Adds to `stats` the COCO stats of the run's float32 and int8 (`--int8`) ONNX exports on
    the test split, at the evaluation thresholds (score 0.001, NMS IoU 0.6, 100 per image),
    through the same predictor `detseg predict best.onnx` uses; returns each export's median
    ms per image end to end (letterbox + graph + boxes back to the image's pixels, batch 1)."""
    import time

    import cv2

    from detseg.config import dump_config, load_config
    from detseg.engine.export import export
    from detseg.engine.exported import exported_predictor

    cfg = load_config(run / "config.yaml", {"predict.score_thr": 0.001, "predict.iou_thr": 0.6, "predict.max_det": 100})
    config = run / "config_eval_thresholds.yaml"
    dump_config(cfg, config)
    ids = {image["file_name"]: image["id"] for image in gt["images"]}
    latency = {}
    for name, int8 in (("detseg onnxruntime", False), ("detseg onnxruntime int8", True)):
        predictor = exported_predictor(export(run, "onnx", run / f"eval{'_int8' if int8 else ''}.onnx", config=config, int8=int8))
        results, times = [], []
        for sample in test.samples:
            frame = cv2.cvtColor(cv2.imread(str(sample.image_path)), cv2.COLOR_BGR2RGB)
            start = time.perf_counter()
            (found,) = predictor([frame])
            times.append(time.perf_counter() - start)
            for (x1, y1, x2, y2), score, label in zip(found["boxes"].tolist(), found["scores"].tolist(), found["labels"].tolist(), strict=True):
                results.append({"image_id": ids[Path(sample.image_path).name], "category_id": label + 1,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score})  # fmt: skip
        stats[name] = _scored(gt, results)
        latency[name] = 1000 * float(np.median(times[1:]))  # the first call allocates
    return latency


# === Table ===


def print_tables(rows: list[dict]) -> None:
    by_section: dict[str, list[dict]] = {}
    for row in rows:
        by_section.setdefault(row["section"], []).append(row)
    for section, members in by_section.items():
        keys = [k for k in members[0] if k != "section"]
        for row in members[1:]:
            keys += [k for k in row if k not in keys and k != "section"]
        print(f"\n== {section}")
        print(" | ".join(keys))
        for row in members:
            print(" | ".join(_cell(row.get(k)) for k in keys))


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    return "" if value is None else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and counts (the test)")
    parser.add_argument("--json", help="write every row to this file")
    parser.add_argument("--peers", choices=["auto", "none", *PEER_TOOLS], default="auto",
                        help="auto: every peer when .venv-peers exists; or only the one named")  # fmt: skip
    parser.add_argument("--backends", nargs="+", default=["tensorflow", "jax"], choices=["tensorflow", "jax"])
    parser.add_argument("--sections", nargs="+", default=["speed", "coco"], choices=["speed", "coco", "accuracy"],
                        help="speed: training, inference and video; coco: evaluation time; accuracy: train each tool --minutes on BCCD")  # fmt: skip
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--accuracy-dir", type=Path, default=REPO / "runs" / "peers_accuracy",
                        help="where the accuracy section's models and detections stay")  # fmt: skip
    parser.add_argument("--rescore", action="store_true",
                        help="accuracy: score what an earlier run left in --accuracy-dir again, without training")  # fmt: skip
    parser.add_argument("--worker", choices=["detseg"], help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:  # a detseg child under the backend its environment names
        emit(detseg_rows(json.loads(args.spec)))
        return
    if not BCCD.is_dir():
        sys.exit(f"bench_peers: {BCCD} not found (the shared data sets)")
    spec = QUICK if args.quick else FULL
    threads = os.cpu_count() or 1
    peers = PEER_TOOLS if args.peers == "auto" else (args.peers,)
    if args.peers == "none" or not PEERS_PYTHON.exists():
        peers = ()
    rows = []
    if "speed" in args.sections:
        for backend in args.backends:
            command = [sys.executable, str(Path(__file__).resolve()), "--worker", "detseg", "--spec", json.dumps(spec)]
            rows += run_worker(command, env={"KERAS_BACKEND": backend, "PYTHONPATH": str(REPO)})
        if peers:
            with tempfile.TemporaryDirectory() as scratch:
                rows += peer_rows(spec, Path(scratch), threads, peers)
    if "coco" in args.sections:
        rows += coco_rows(spec["coco_images"])
    if "accuracy" in args.sections:
        rows += accuracy_rows(args.minutes, args.accuracy_dir, peers, threads, args.rescore)
    print_tables(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
