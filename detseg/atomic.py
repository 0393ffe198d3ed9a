"""Files that are either whole or untouched: write to a temporary name beside the target, then
rename it over the target.

A run folder is rewritten at every epoch (checkpoints, history, metrics). A process killed,
interrupted or out of disk in the middle of a write must never leave a truncated file where a
good one was: `os.replace` is atomic on POSIX and Windows file systems, so readers see the old
file or the new one, never half of either. The temporary name keeps the target's suffix
(`best.keras` -> `best.partial.keras`) because some writers pick the format from it (Keras
requires `.keras`, matplotlib and OpenCV choose the image codec by extension).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from detseg.errors import DetsegError

__all__ = ["partial_path", "replacing", "write_text"]


def partial_path(path: str | Path) -> Path:
    """The temporary name a write of `path` goes to: `dir/name.partial.ext`."""
    path = Path(path)
    return path.with_name(f"{path.stem}.partial{path.suffix}")


def _flush_to_disk(path: Path) -> None:
    """fsync the finished temporary file, so the rename never publishes unwritten blocks (a
    power cut after the rename would otherwise leave an empty file)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _discard(partial: Path) -> None:
    """Remove a temporary file if there is one; a failure here must not hide the first error."""
    try:
        partial.unlink(missing_ok=True)
    except OSError:
        pass


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """Yield the temporary path to write; when the block succeeds it replaces `path`.

    On any exception (Ctrl-C included) the temporary file is removed and `path` is left as it
    was. The parent folder is created. An `OSError` becomes a one-line `DetsegError` naming
    `path`. Usage: `with replacing(run / "best.keras") as tmp: model.save(tmp)`.
    """
    path = Path(path)
    partial = partial_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield partial
        _flush_to_disk(partial)
        os.replace(partial, path)
    except OSError as err:
        _discard(partial)
        raise DetsegError(f"cannot write ({err.strerror or err})", path) from None
    except BaseException:
        _discard(partial)
        raise


def write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 `text` to `path` atomically (see `replacing`); returns `path`."""
    path = Path(path)
    with replacing(path) as partial:
        partial.write_text(text, encoding="utf-8")
    return path
