"""Classification data as one sub-folder of images per class (`root/<class>/*.jpg`).

Each image becomes a sample with one whole-image box and its folder's label, so the same
loader and summaries serve classification.
"""

from __future__ import annotations

from pathlib import Path

from detseg.data.images import find_images, image_size
from detseg.data.sample import Dataset, Sample, Summary
from detseg.errors import DetsegError

__all__ = ["load_imagefolder"]


def load_imagefolder(root: str | Path, *, strict: bool = True) -> Dataset:
    """Read `root/<class>/<image>`; classes are the sub-folder names in sorted order.

    An unreadable image is an error naming it (strict, the default), or skipped and counted.
    """
    root = Path(root)
    if not root.is_dir():
        raise DetsegError("image folder not found", root)
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir())
    if not class_dirs:
        raise DetsegError("no class sub-folders (expected root/<class>/<image>)", root)
    summary = Summary(strict=strict)
    samples = []
    for label, class_dir in enumerate(class_dirs):
        images = find_images(class_dir)
        if not images:
            summary.note(f"class folder without images: {class_dir.name}")
        for image_path in images:
            try:
                width, height = image_size(image_path)
            except DetsegError as err:
                summary.reject(err, image_path)
                continue
            samples.append(
                Sample(
                    image_path,
                    width,
                    height,
                    [[0, 0, width, height]],
                    [label],
                    image_id=image_path.stem,
                )
            )
    return Dataset(samples, [p.name for p in class_dirs], summary, image_dir=root)
