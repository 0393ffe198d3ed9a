"""Obvious reference readers the tests compare detseg's readers against, and the epochs a
loader gives through Keras's own data adapter."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path


def keras_epochs(loader, epochs: int = 2) -> list[list]:
    """The batches of `epochs` epochs of a PyDataset as `model.fit` takes them: through Keras's
    adapter, whose workers run `__getitem__` on a thread pool, or on a process pool that
    receives the loader (its epoch included) every epoch."""
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

    adapter, out = PyDatasetAdapter(loader, shuffle=False), []
    for _ in range(epochs):
        adapter.on_epoch_begin()
        out.append(list(adapter.get_numpy_iterator()))
        adapter.on_epoch_end()
    return out


def voc_objects(xml_path: Path) -> list[tuple[str, list[float]]]:
    """(name, [xmin, ymin, xmax, ymax]) of every object of a VOC XML, as written."""
    objects = []
    for obj in ET.parse(xml_path).getroot().iter("object"):
        box = obj.find("bndbox")
        objects.append(
            (
                obj.findtext("name"),
                [float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")],
            )
        )
    return objects
