"""Atomic writes: a write that fails half-way leaves the previous file whole and no debris."""

from __future__ import annotations

import pytest

from detseg.atomic import partial_path, replacing, write_text
from detseg.errors import DetsegError


def test_the_temporary_name_keeps_the_suffix():
    # Keras needs .keras, matplotlib and OpenCV pick the codec from the extension
    assert partial_path("runs/x/best.keras").name == "best.partial.keras"
    assert partial_path("history.csv").name == "history.partial.csv"


def test_a_write_interrupted_half_way_keeps_the_previous_file(tmp_path):
    target = write_text(tmp_path / "history.csv", "epoch,loss\n0,1.5\n")
    for interruption in (RuntimeError("disk gone"), KeyboardInterrupt()):
        with pytest.raises(type(interruption)):
            with replacing(target) as partial:
                partial.write_text("epoch,lo")  # half of the new content is on disk
                raise interruption
        assert target.read_text() == "epoch,loss\n0,1.5\n"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["history.csv"]  # no .partial left


def test_a_finished_write_replaces_the_file_and_creates_folders(tmp_path):
    target = tmp_path / "run" / "config.yaml"
    write_text(target, "old: 1\n")
    write_text(target, "new: 2\n")
    assert target.read_text() == "new: 2\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["config.yaml"]


def test_an_os_error_is_one_line_naming_the_file(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(DetsegError, match=r"^.*file/metrics\.json: cannot write \(") as info:
        write_text(blocker / "metrics.json", "{}")  # its parent is a file
    assert "\n" not in str(info.value)
