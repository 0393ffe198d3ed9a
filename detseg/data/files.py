"""Reading annotation files with one-line errors that name the file (and the line, for parse errors)."""

from __future__ import annotations

import codecs
import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from detseg.atomic import write_text
from detseg.errors import DetsegError

__all__ = ["format_number", "image_in_folder", "read_json", "read_xml", "relative_name", "write_json"]


def _read_bytes(path: Path, what: str) -> bytes:
    if not path.is_file():
        raise DetsegError(f"{what} not found", path)
    data = path.read_bytes()
    if not data.strip():
        raise DetsegError(f"{what} is empty", path)
    return data


def read_json(path: str | Path, what: str = "annotation file") -> Any:
    """Parse a JSON file; errors say missing / empty / the line and column where parsing failed."""
    path = Path(path)
    data = _read_bytes(path, what).removeprefix(codecs.BOM_UTF8)  # some Windows tools write one
    try:
        return json.loads(data)
    except json.JSONDecodeError as exc:
        raise DetsegError(
            f"not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}", path
        ) from None
    except UnicodeDecodeError:
        raise DetsegError("not valid JSON: not UTF-8 text", path) from None


def read_xml(path: str | Path, what: str = "annotation file") -> ET.Element:
    """Parse an XML file into its root element; errors name the line and column."""
    path = Path(path)
    data = _read_bytes(path, what)
    try:
        return ET.fromstring(data)
    except ET.ParseError as exc:
        line, column = exc.position
        message = str(exc).split(":")[0]
        raise DetsegError(
            f"XML does not parse at line {line} column {column + 1}: {message}", path
        ) from None


def write_json(obj: Any, path: str | Path, *, indent: int | None = None) -> Path:
    """Write JSON (compact, or indented for files people read), creating the parent folder.

    The text goes to a temporary name that then replaces `path`, so an interrupted write
    never leaves a truncated file in place of a good one.
    """
    separators = (",", ":") if indent is None else None
    return write_text(path, json.dumps(obj, indent=indent, separators=separators) + "\n")


def relative_name(path: Path, root: Path | None) -> str:
    """`path` relative to `root` with forward slashes, or its bare name when it is not under `root`."""
    if root is not None:
        rel = os.path.relpath(Path(path).resolve(), Path(root).resolve())
        if not rel.startswith(".."):
            return Path(rel).as_posix()
    return Path(path).name


def format_number(value: float) -> str:
    """A coordinate as short text that reads back within 1e-4: `12`, `12.5`, `12.3457`."""
    text = f"{float(value):.4f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def image_in_folder(image_dir: Path, name: str, where: str | Path) -> Path:
    """The image `name` (a file name taken from an annotation) inside `image_dir`.

    A name that leaves the folder (`../../etc/passwd`, or an absolute path elsewhere) is an
    error naming the annotation (`where`), so annotation files cannot make the toolkit read
    (or, through converted outputs, point at) files outside the dataset. The check is on the
    text of the path, so images that are symbolic links to elsewhere still load.
    """
    if "\0" in name:
        raise DetsegError(f"image file name {name!r} holds a NUL character", where)
    folder = os.path.normpath(os.path.abspath(image_dir))
    target = os.path.normpath(os.path.join(folder, name))
    if os.path.commonpath([folder, target]) != folder:
        raise DetsegError(f"image file name {name!r} is outside the image folder", where)
    return Path(image_dir) / os.path.relpath(target, folder)
