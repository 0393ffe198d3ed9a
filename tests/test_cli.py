"""The `detseg` command as a user runs it: exit codes and one-line errors, in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def run_cli(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "detseg", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_help_lists_every_subcommand():
    res = run_cli("--help")
    assert res.returncode == 0
    for cmd in ("train", "evaluate", "predict", "anchors", "convert", "export", "info", "demo"):
        assert cmd in res.stdout


@pytest.mark.jax
def test_info_reports_versions_and_backend_without_native_noise():
    res = run_cli("info")
    assert res.returncode == 0, res.stderr
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    assert f"backend {backend}" in res.stdout
    assert "keras 3." in res.stdout
    assert "devices cpu:0" in res.stdout
    assert "cuda" not in res.stderr.lower()  # TensorFlow's start-up chatter is hidden without -v


def test_unknown_subcommand_exits_2_with_one_line():
    res = run_cli("bogus")
    assert res.returncode == 2
    assert len(res.stderr.strip().splitlines()) == 1
    assert res.stderr.startswith("detseg: error: argument COMMAND: invalid choice: 'bogus'")


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("train:\n  epoch: 3\n", "unknown key 'train.epoch' (did you mean 'epochs'?)"),
        ("train:\n  epochs: three\n", "train.epochs: input should be a valid integer"),
        # A field the chosen kind would ignore, and a key of another kind's model section.
        (
            "model:\n  kind: classifier\ntrain:\n  augment:\n    mosaic_p: 0.5\n",
            "train.augment.mosaic_p: not used by model.kind 'classifier'",
        ),
        ("model:\n  kind: yolov3\n  top: gap\n", "unknown key 'model.top' for model.kind 'yolov3'"),
        ("model:\n  kind: classifier\n  yolo:\n    width: 0.5\n", "unknown key 'model.yolo' for model.kind 'classifier'"),
        ("model:\n  kind: unet3d\n", "model.kind: must be one of"),
    ],
)
def test_bad_config_exits_2_naming_the_file(tmp_path, yaml_text, expected):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml_text)
    res = run_cli("train", str(cfg))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr  # one line, no traceback
    assert lines[0].startswith(f"detseg: error: {cfg}: ")
    assert expected in lines[0]


def test_missing_config_and_bad_override_exit_2(tmp_path):
    res = run_cli("train", str(tmp_path / "nope.yaml"))
    assert (res.returncode, res.stderr.strip()) == (
        2,
        f"detseg: error: {tmp_path / 'nope.yaml'}: config file not found",
    )
    cfg = tmp_path / "ok.yaml"
    cfg.write_text("train:\n  epochs: 1\n")
    res = run_cli("train", str(cfg), "--set", "train.epochs")
    assert res.returncode == 2
    assert "is not of the form key=value" in res.stderr


def test_internal_error_exits_1_with_traceback(monkeypatch, capsys):
    from detseg import cli

    def boom(args):
        raise RuntimeError("kaboom")

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    parser._subparsers._group_actions[0].choices["info"].set_defaults(handler=boom)
    assert cli.main(["-q", "info"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: kaboom" in err


@pytest.mark.parametrize("script", ["train.py", "infer_video.py", "evaluate.py"])
def test_tools_scripts_are_thin_wrappers(script):
    from tests.conftest import REPO_ROOT

    res = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tools" / script), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0
    sub = {"train.py": "train", "infer_video.py": "predict", "evaluate.py": "evaluate"}[script]
    assert res.stdout.startswith(f"usage: detseg {sub}")


def test_evaluate_results_file_matches_pycocotools_through_the_cli(tmp_path, shared_data):
    import json

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    folder = shared_data / "coco_val2014_100"
    gt, dt = folder / "instances_val2014_100.json", folder / "instances_val2014_fakebbox100_results.json"
    res = run_cli("evaluate", "--gt", str(gt), "--dt", str(dt), "--json", str(tmp_path / "m.json"))
    assert res.returncode == 0, res.stderr
    coco_gt = COCO(str(gt))
    reference = COCOeval(coco_gt, coco_gt.loadRes(str(dt)), "bbox")
    reference.evaluate(), reference.accumulate(), reference.summarize()
    stats = json.loads((tmp_path / "m.json").read_text())["stats"]
    assert stats == pytest.approx(list(reference.stats), abs=1e-6)


def test_evaluate_gt_without_dt_is_a_usage_error():
    res = run_cli("evaluate", "--gt", "gt.json")
    assert res.returncode == 2
    assert res.stderr.strip() == "detseg: error: --gt and --dt go together (ground truth and detections files)"


def test_evaluate_a_model_refuses_the_results_file_scoring_flags():
    res = run_cli("evaluate", "runs/x", "--protocol", "voc07", "--iou-thr", "0.7")
    assert res.returncode == 2
    assert res.stderr.strip() == (
        "detseg: error: --protocol, --iou-thr score a results file (--gt/--dt); "
        "a model's evaluation reports its task's own tables"
    )


def test_convert_of_a_truncated_xml_is_one_line_without_keras(tmp_path):
    """`detseg convert` never imports Keras or TensorFlow: no start-up chatter, no seconds lost."""
    (tmp_path / "ann").mkdir()
    (tmp_path / "ann" / "a.xml").write_text("<annotation><filename>a.jpg</filename><size><width>10")
    probe = (
        "import sys, json\n"
        "from detseg.cli import main\n"
        f"code = main(['convert', '--from', 'voc', '--to', 'coco', {str(tmp_path / 'ann')!r}, {str(tmp_path / 'out.json')!r}])\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'keras', 'tensorflow', 'jax', 'albumentations'})\n"
        "print(json.dumps(heavy))\n"
        "sys.exit(code)\n"
    )
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert res.stderr.splitlines() == [
        f"detseg: error: {tmp_path / 'ann' / 'a.xml'}: XML does not parse at line 1 column 54: no element found"
    ]
    assert res.stdout.strip() == "[]"  # none of the heavy modules was imported


def test_scoring_a_results_file_imports_no_keras(shared_data):
    """`detseg evaluate --gt --dt` is NumPy + pycocotools' file format only: no backend start."""
    folder = shared_data / "coco_val2014_100"
    gt, dt = folder / "instances_val2014_100.json", folder / "instances_val2014_fakebbox100_results.json"
    probe = (
        "import sys, json\n"
        "from detseg.cli import main\n"
        f"code = main(['-q', 'evaluate', '--gt', {str(gt)!r}, '--dt', {str(dt)!r}])\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'keras', 'tensorflow', 'jax', 'albumentations'})\n"
        "print(json.dumps(heavy))\n"
        "sys.exit(code)\n"
    )
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "[]"
