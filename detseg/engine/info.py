"""`detseg info`: what is installed and which devices Keras sees; a dataset's summary."""

from __future__ import annotations

import importlib.metadata
import platform

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
    """Versions of detseg and its main dependencies, the Keras backend and its devices."""
    import keras

    from detseg import __version__

    lines = [f"detseg {__version__}", f"python {platform.python_version()} ({platform.platform()})"]
    lines += [f"{dist} {_version(dist)}" for dist in _PACKAGES]
    lines.append(f"backend {keras.backend.backend()}")
    lines.append(f"devices {', '.join(keras.distribution.list_devices())}")
    return "\n".join(lines)


def data_info(cfg: Config, split: str = "train", gallery: str | None = None) -> str:
    """The summary of one split of a config's dataset (and an optional gallery PNG)."""
    from detseg.data import build_augment, load_split
    from detseg.viz import save_gallery

    dataset = load_split(cfg.data, split)
    text = dataset.summary_text()
    if gallery:
        augment = build_augment(cfg.train.augment) if split == "train" else None
        save_gallery(dataset, gallery, augment=augment, size=cfg.model.input_size, mosaic_p=cfg.train.augment.mosaic_p)
        text += f"\ngallery: {gallery}"
    return text
