"""The console script's restart on a tuned memory allocator (detseg.allocator)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from detseg import allocator

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the restart is Linux-only")


def test_an_already_set_marker_keeps_the_process_as_it_is():
    assert allocator.tuned_environment({allocator.MARKER: "system"}) is None
    assert allocator.tuned_environment({allocator.MARKER: "tcmalloc", "PATH": "/bin"}) is None


def test_tcmalloc_is_preloaded_before_what_was_already_preloaded(monkeypatch):
    monkeypatch.setattr(allocator, "find_tcmalloc", lambda: "libtcmalloc_minimal.so.4")
    env = allocator.tuned_environment({"LD_PRELOAD": "libfoo.so", "PATH": "/bin"})
    assert env == {
        "LD_PRELOAD": "libtcmalloc_minimal.so.4 libfoo.so",
        "PATH": "/bin",
        allocator.MARKER: "tcmalloc",
    }


def test_without_tcmalloc_glibc_is_tuned_keeping_the_users_tunables(monkeypatch):
    monkeypatch.setattr(allocator, "find_tcmalloc", lambda: None)
    env = allocator.tuned_environment({"GLIBC_TUNABLES": "glibc.malloc.tcache_count=0"})
    assert env["GLIBC_TUNABLES"] == allocator.GLIBC_TUNABLES + ":glibc.malloc.tcache_count=0"
    assert env[allocator.MARKER] == "glibc-tuned"
    assert "LD_PRELOAD" not in env


def test_the_restarted_process_runs_on_the_tuned_allocator():
    """A real restart: the child sees the marker, and tcmalloc is mapped into it when found."""
    probe = (
        "import os; maps = open('/proc/self/maps').read(); "
        "print(os.environ['DETSEG_ALLOCATOR'], 'tcmalloc' in maps)"
    )
    parent = (
        "import os, sys; from detseg.allocator import restart_with_tuned_allocator; "
        "os.environ.pop('DETSEG_ALLOCATOR', None); "
        f"restart_with_tuned_allocator([sys.executable, '-c', {probe!r}]); print('not restarted')"
    )
    out = subprocess.run([sys.executable, "-c", parent], capture_output=True, text=True, check=True)
    expected = "tcmalloc True" if allocator.find_tcmalloc() else "glibc-tuned False"
    assert out.stdout.strip() == expected
