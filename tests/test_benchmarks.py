"""The benchmark scripts run: `--quick` versions in process, each figure a real measurement."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from tests.conftest import REPO_ROOT


def _script(name: str):
    """benchmarks/<name>.py as a module (its folder on sys.path, as when it runs)."""
    folder = REPO_ROOT / "benchmarks"
    sys.path.insert(0, str(folder))
    try:
        spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(folder))
    return module


def test_bench_input_quick_measures_every_row_for_both_dtypes(capsys, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)  # the default config path is relative to the repository
    rows = _script("bench_input").main(["--quick"])
    assert list(rows) == ["loader alone", "fit over the loader", "fit over ready batches"]
    for rates in rows.values():
        assert set(rates) == {"uint8", "float32"}
        assert all(rate > 0 for rate in rates.values())
    out = capsys.readouterr().out
    assert "uint8: loader / ready" in out and "float32: loader / ready" in out


def _positive_numbers(rows: list[dict]) -> None:
    """Every figure of every row is a positive number (ids, names and absent cells aside)."""
    for row in rows:
        for key, value in row.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "max_stats_diff":
                assert value > 0, (key, row)


def test_bench_peers_quick_measures_detseg_in_every_section(shared_data):
    """The default run measures detseg alone (peers absent), in process, at a tiny size: every
    section's table has its columns and positive figures, and the COCO numbers agree."""
    if not (shared_data / "bccd").is_dir():
        pytest.skip(f"{shared_data / 'bccd'} not found")
    bench = _script("bench_peers")
    # Eager training steps and Keras inference only: the ONNX export alone is about a third of
    # the test's time. The slow peers test below runs the onnxruntime rows; tests/engine covers
    # the export and its int8 form.
    spec = {"train": [[64, 2]], "infer": [64], "video": [64], "steps": 2, "repeats": 2, "frames": 3,
            "runtimes": ["keras"], "eager": True}  # fmt: skip
    rows = bench.detseg_rows(spec) + bench.coco_rows(20)
    _positive_numbers(rows)
    sections = {(r["section"], r.get("runtime", r["tool"])) for r in rows}
    assert sections == {
        ("train", "detseg"), ("infer", "keras"), ("video", "keras"), ("coco", "detseg"),
        ("coco", "faster-coco-eval"), ("coco", "pycocotools"),
    }  # fmt: skip
    assert all(r["max_stats_diff"] < 1e-12 for r in rows if r["section"] == "coco")
    video = [r for r in rows if r["section"] == "video"]
    assert all(r["frames"] == 3 for r in video)


@pytest.mark.slow
def test_bench_peers_quick_with_the_peers(tmp_path, shared_data):
    """`--quick` with Ultralytics and KerasCV, when `make bench-peers` made .venv-peers."""
    if not (REPO_ROOT / ".venv-peers" / "bin" / "python").exists():
        pytest.skip(".venv-peers not found (make bench-peers)")
    import json
    import subprocess

    out = tmp_path / "rows.json"
    subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "bench_peers.py"), "--quick", "--json", str(out)], check=True)
    rows = json.loads(out.read_text())
    _positive_numbers(rows)
    tools = {(r["tool"], r["section"]) for r in rows}
    for tool in ("detseg", "ultralytics", "kerascv"):
        assert {(tool, "train"), (tool, "infer"), (tool, "video")} <= tools
    measured = [r for r in rows if r["tool"] == "detseg" and r["section"] != "coco"]  # COCO rows have no backend
    assert {r["backend"] for r in measured} == {"tensorflow", "jax"}
    tf_runtimes = {r["runtime"] for r in measured if r["backend"] == "tensorflow" and r["section"] == "infer"}
    assert {"keras", "onnxruntime"} <= tf_runtimes  # the default run measures Keras only


@pytest.mark.slow  # 20 s: two exports and a CLI evaluation of BCCD's test split
def test_bench_peers_rescore_scores_a_left_run_and_the_peers_detections(tmp_path, shared_data):
    """`--sections accuracy --rescore`: no training; detseg's run is scored through Keras and its
    float32 / int8 ONNX exports (each with its latency), and each peer's detection file as it
    is. References: the test split's own boxes as detections score AP 1, the same boxes with
    every class wrong score 0."""
    if not (shared_data / "bccd").is_dir():
        pytest.skip(f"{shared_data / 'bccd'} not found")
    import json

    from detseg.config import config_from_dict, dump_config, load_config
    from detseg.data import load_split
    from detseg.data.coco import write_coco
    from tests.engine.test_export import confident_detector, tiny_config
    from tests.heads.yolo_helpers import draw_shapes

    bench = _script("bench_peers")
    with pytest.raises(SystemExit, match="--rescore: .*detseg/best.keras, .*ultralytics_test.json, .*kerascv_test.json not found"):
        bench.accuracy_rows(15, tmp_path, bench.PEER_TOOLS, threads=2, rescore=True)
    run = tmp_path / "detseg"
    run.mkdir()
    settings = tiny_config().model_dump(mode="json", exclude_defaults=True)
    bccd = load_config(bench.ACCURACY_CONFIG, {"data.root": str(bench.BCCD)}).data
    dump_config(config_from_dict({**settings, "data": bccd.model_dump(mode="json", exclude_defaults=True)}), run / "config.yaml")
    confident_detector(draw_shapes(4, 64, seed=1)[0]).save(run / "best.keras")
    with pytest.raises(SystemExit, match="--rescore: [^,]*ultralytics_test.json, [^,]*kerascv_test.json not found"):
        bench.accuracy_rows(15, tmp_path, bench.PEER_TOOLS, threads=2, rescore=True)
    assert not (tmp_path / "bccd_test.json").exists()  # refused before any work

    test = load_split(bccd, "test")
    gt = json.loads(write_coco(test, tmp_path / "reference.json").read_text())
    truth = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
             for a in gt["annotations"]]  # fmt: skip
    wrong = [{**d, "category_id": d["category_id"] % 3 + 1} for d in truth]
    (tmp_path / "ultralytics_test.json").write_text(json.dumps(truth))
    (tmp_path / "kerascv_test.json").write_text(json.dumps(wrong))
    rows = {r["tool"]: r for r in bench.accuracy_rows(15, tmp_path, bench.PEER_TOOLS, threads=2, rescore=True)}

    assert list(rows) == ["detseg", "detseg onnxruntime", "detseg onnxruntime int8", "ultralytics", "kerascv"]
    assert [rows["ultralytics"][k] for k in ("AP", "AP50", "AP75")] == [1.0, 1.0, 1.0]
    assert [rows["kerascv"][k] for k in ("AP", "AP50", "AP75")] == [0.0, 0.0, 0.0]
    for tool in ("detseg", "detseg onnxruntime", "detseg onnxruntime int8"):
        assert all(0 <= rows[tool][k] <= 1 for k in ("AP", "AP50", "AP75"))
    assert rows["detseg"]["ms per image"] is None and rows["ultralytics"]["ms per image"] is None
    assert rows["detseg onnxruntime"]["ms per image"] > 0 and rows["detseg onnxruntime int8"]["ms per image"] > 0
    assert (run / "eval.onnx").is_file() and (run / "eval_int8.onnx").is_file()


def test_diagnose_boxes_ap_per_threshold_is_pycocotools_precision(shared_data):
    """AP at 0.50 and 0.75 are pycocotools' stats[1] and [2]; their mean over the ten is stats[0]."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    folder = shared_data / "coco_val2014_100"
    gt, dt = folder / "instances_val2014_100.json", folder / "instances_val2014_fakebbox100_results.json"
    report = _script("diagnose_boxes").ap_by_threshold(gt, dt)
    coco_gt = COCO(str(gt))
    reference = COCOeval(coco_gt, coco_gt.loadRes(str(dt)), "bbox")
    reference.evaluate(), reference.accumulate(), reference.summarize()
    by_iou = report["AP_at_iou"]
    assert by_iou["0.50"] == pytest.approx(reference.stats[1], abs=1e-12)
    assert by_iou["0.75"] == pytest.approx(reference.stats[2], abs=1e-12)
    assert sum(by_iou.values()) / 10 == pytest.approx(reference.stats[0], abs=1e-12)
    assert report["AP_small"] == pytest.approx(reference.stats[3], abs=1e-12)


def test_diagnose_boxes_tightness_of_a_hand_made_case():
    """Truth [0, 0, 10, 10] (class 0) and [20, 20, 30, 30] (class 1); detections: class 0 at
    [0, 0, 10, 8] (IoU 0.8), the second box found only by the wrong class, and a low score."""
    import numpy as np

    from detseg.data.sample import Dataset, Sample

    sample = Sample("a.jpg", 40, 40, np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32), np.array([0, 1], np.int32))
    data = Dataset([sample], ["a", "b"])
    detections = [
        {"image_id": 7, "category_id": 1, "bbox": [0, 0, 10, 8], "score": 0.9},
        {"image_id": 7, "category_id": 1, "bbox": [20, 20, 10, 10], "score": 0.9},
        {"image_id": 7, "category_id": 2, "bbox": [20, 20, 10, 10], "score": 0.1},
    ]
    report = _script("diagnose_boxes").tightness(data, [7], detections, score_thr=0.25)
    assert report["ground_truths"] == 2 and report["recall_at_0.5"] == 0.5
    assert report["best_iou_quantiles_of_found"]["0.5"] == pytest.approx(0.8)
    assert report["found_below_0.75"] == 0.0 and report["found_below_0.90"] == 1.0


def test_bench_gpu_quick_reports_every_figure(tmp_path, shared_data):
    """`bench_gpu.py --quick --json` (a subprocess, as it is run): every figure present and
    positive, and the fraction of peak is 3 x GFLOPs x img/s over the peak, recomputed here."""
    if not (shared_data / "bccd").is_dir():
        pytest.skip(f"{shared_data / 'bccd'} not found")
    import json
    import subprocess

    out = tmp_path / "gpu.json"
    script = REPO_ROOT / "benchmarks" / "bench_gpu.py"
    command = [sys.executable, str(script), "--quick", "--data", str(shared_data / "bccd"), "--json", str(out)]
    subprocess.run(command, check=True, cwd=REPO_ROOT)
    row = json.loads(out.read_text())
    figures = ("size", "batch", "timed_batches", "img_s", "gflops", "train_tflops", "peak_tflops")
    assert all(row[key] > 0 for key in (*figures, "fraction_of_peak")), row
    assert row["device"] and row["backend"] and row["policy"] == "float32"
    assert (row["size"], row["batch"], row["timed_batches"]) == (128, 2, 3)
    fraction = 3 * row["gflops"] * 1e9 * row["img_s"] / (row["peak_tflops"] * 1e12)  # FLOP/s over FLOP/s
    assert row["fraction_of_peak"] == pytest.approx(fraction, rel=1e-9)
