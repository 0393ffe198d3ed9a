"""The benchmark scripts run: `--quick` versions in process, each figure a real measurement."""

from __future__ import annotations

import importlib.util
import sys

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
