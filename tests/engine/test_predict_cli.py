"""`detseg predict` as a user runs it: sources that cannot open fail fast with one line."""

from __future__ import annotations

import subprocess
import sys
import time

from detseg.config import dump_config, load_config
from tests.engine.test_classify import cli_in_process


def test_missing_webcam_exits_2_in_seconds_before_loading_the_model(tmp_path):
    run = tmp_path / "run"
    dump_config(load_config(None, {"data.names": ["a"]}), run / "config.yaml")
    (run / "best.keras").write_bytes(b"not a model")  # never loaded: the source fails first
    start = time.monotonic()
    res = subprocess.run(
        [sys.executable, "-m", "detseg", "predict", str(run), "--source", "97"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    # backend start-up is most of it; the camera itself gives up within its 10 s open timeout
    assert time.monotonic() - start < 60
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("detseg: error: ") and "97" in lines[0], res.stderr


def test_missing_model_exits_2(tmp_path, capsys):
    res = cli_in_process(capsys, "predict", str(tmp_path / "nope.keras"), "--source", "x.jpg")
    assert res.returncode == 2
    assert res.stderr.strip() == f"detseg: error: {tmp_path / 'nope.keras'}: model file not found (give a run folder or a .keras file)"
