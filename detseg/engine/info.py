"""`detseg info`: what is installed and which devices Keras sees; a dataset's summary."""

from __future__ import annotations

import importlib.metadata
import platform

from detseg.allocator import allocator_in_use
from detseg.config import Config

_PACKAGES = (
    "keras",
    "tensorflow",
    "jax",
    "numpy",
    "opencv-python-headless",
    "albumentations",
    "pycocotools",
    "pydantic",
)


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def environment_info() -> str:
    """Versions of detseg and its main dependencies, the Keras backend, its devices and the
    memory allocator."""
    import keras

    from detseg import __version__

    lines = [f"detseg {__version__}", f"python {platform.python_version()} ({platform.platform()})"]
    lines += [f"{dist} {_version(dist)}" for dist in _PACKAGES]
    lines.append(f"backend {keras.backend.backend()}")
    lines.append(f"devices {', '.join(keras.distribution.list_devices())}")
    lines.append(f"allocator {allocator_in_use()}")
    return "\n".join(lines)


def data_info(cfg: Config, split: str = "train", gallery: str | None = None, n: int = 8) -> str:
    """The summary of one split of a config's dataset, and optionally a gallery PNG of `n`
    samples as the model sees them (augmented as in training for the train split)."""
    from detseg.data import DetectionLoader, load_split, training_loader
    from detseg.viz import GalleryTargets, save_gallery

    dataset = load_split(cfg.data, split)
    text = dataset.summary_text()
    if gallery:
        n = min(n, len(dataset))
        if split == "train":  # detection augmentation: it moves boxes, not semantic masks
            loader = training_loader(cfg, dataset, GalleryTargets(semantic=False), batch_size=n)
        else:
            targets = GalleryTargets(semantic=dataset.mask_values is not None)
            loader = DetectionLoader(dataset, cfg.model.input_size, n, encoder=targets, shuffle=True, seed=cfg.train.seed)
        save_gallery(loader, gallery)
        text += f"\ngallery: {gallery}"
    return text
