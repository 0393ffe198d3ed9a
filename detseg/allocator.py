"""Start the `detseg` process on a memory allocator that reuses freed tensor memory.

Training on the CPU frees and reallocates megabyte-sized tensors at every step. glibc's
default malloc hands them back to the kernel and gets fresh zeroed pages each time: on the
2-core machine this project is measured on, a two-epoch run of the demo detector spent more
than half its time in the kernel (38 million page faults). tcmalloc keeps the memory
(`benchmarks/bench_allocator.py` measures each choice against glibc's default in one run).

The console script re-executes itself once, before anything heavy is imported, with
`LD_PRELOAD` naming tcmalloc when the system has it (Debian/Ubuntu: `libtcmalloc-minimal4`),
else with glibc tunables that keep freed memory and back the heap with transparent huge
pages. Setting `DETSEG_ALLOCATOR` to anything (e.g. `system`) before starting turns it off.
"""

from __future__ import annotations

import ctypes.util
import os
import platform
import sys
from collections.abc import Mapping, Sequence

MARKER = "DETSEG_ALLOCATOR"
TCMALLOC_LIBRARIES = ("tcmalloc_minimal", "tcmalloc")
# Huge pages for the heap; freed memory stays in the process (no trim, a 256 MB pad on
# every heap growth) instead of going back to the kernel and faulting in again, zeroed.
GLIBC_TUNABLES = (
    "glibc.malloc.hugetlb=1:glibc.malloc.trim_threshold=4294967296:glibc.malloc.top_pad=268435456"
)


def find_tcmalloc() -> str | None:
    """The file name of the system's tcmalloc library, or None."""
    for name in TCMALLOC_LIBRARIES:
        found = ctypes.util.find_library(name)
        if found:
            return found
    return None


def _prepend(value: str, existing: str | None, sep: str) -> str:
    return value if not existing else f"{value}{sep}{existing}"


def tuned_environment(environ: Mapping[str, str]) -> dict[str, str] | None:
    """The environment to restart with, or None to keep this process as it is.

    None on other systems than Linux with glibc, and when `DETSEG_ALLOCATOR` is already set
    (by the user to opt out, or by the restart itself, so it happens at most once).
    """
    if MARKER in environ or sys.platform != "linux" or not sys.executable:
        return None
    if platform.libc_ver()[0] != "glibc":
        return None
    env = dict(environ)
    library = find_tcmalloc()
    if library:
        env["LD_PRELOAD"] = _prepend(library, environ.get("LD_PRELOAD"), " ")
        env[MARKER] = "tcmalloc"
    else:
        env["GLIBC_TUNABLES"] = _prepend(GLIBC_TUNABLES, environ.get("GLIBC_TUNABLES"), ":")
        env[MARKER] = "glibc-tuned"
    return env


def restart_with_tuned_allocator(command: Sequence[str]) -> None:
    """Replace this process by `command` (program and arguments) on the tuned allocator (no
    return), or return at once when `tuned_environment` says to keep this process."""
    env = tuned_environment(os.environ)
    if env is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execvpe(command[0], list(command), env)


def allocator_in_use() -> str:
    """What `detseg info` reports: tcmalloc, glibc-tuned, or the system default."""
    return os.environ.get(MARKER, "system default")


if __name__ == "__main__":  # python -m detseg.allocator PROGRAM [ARGS...], as `make test` does
    if len(sys.argv) < 2:
        sys.exit("usage: python -m detseg.allocator PROGRAM [ARGS...]")
    restart_with_tuned_allocator(sys.argv[1:])
    os.execvp(sys.argv[1], sys.argv[1:])
