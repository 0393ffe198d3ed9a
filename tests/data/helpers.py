"""Obvious reference readers the tests compare detseg's readers against."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path


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
