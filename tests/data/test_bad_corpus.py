"""The bad-input corpus (issue 14): every case is one line of `CASES`.

Each case writes a small dataset (or config, or model file) with one defect into `tmp_path`
next to good items, and is checked three ways:
- through the library: a `DetsegError` whose message is one line naming the file (and the
  line, id or key) and the problem;
- through the CLI, in process: exit 2, exactly one stderr line `detseg: error: <file>: ...`,
  no traceback;
- in lenient loading (`data.strict: false`), for item-level defects: the defective item is
  skipped (or repaired) and counted in the summary that `detseg info` prints.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from detseg.cli import main
from detseg.config import load_config
from detseg.data import load_split
from detseg.errors import DetsegError

from .conftest import write_image

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # lenient readers warn; we read the counts

Writer = Callable[[Path], Path]  # writes the case into a folder, returns the config file


# === Builders: a good item beside the bad one, so that lenient loading keeps something ===


def _config(tmp: Path, data: dict, **sections: dict) -> Path:
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump({"data": {"workers": 0, **data}, **sections}))
    return path


def _obj(name: str | None, box: tuple | None) -> str:
    coords = "" if box is None else "".join(
        f"<{k}>{v}</{k}>" for k, v in zip(("xmin", "ymin", "xmax", "ymax"), box, strict=True)
    )
    name_tag = "" if name is None else f"<name>{name}</name>"
    bndbox = "" if box is None else f"<bndbox>{coords}</bndbox>"
    return f"<object>{name_tag}{bndbox}</object>"


GOOD_OBJECT = _obj("cat", (1, 1, 9, 9))
SIZE = "<size><width>64</width><height>48</height><depth>3</depth></size>"


def voc(objects: str, *, size: str = SIZE, filename: str = "a.jpg", names: list | None = None,
        xml: str | None = None, image: Callable[[Path], None] | None = None) -> Writer:  # fmt: skip
    """A flat VOC folder: `a.xml` (the case) and `b.xml` (good), with their images."""

    def write(tmp: Path) -> Path:
        folder = tmp / "voc"
        folder.mkdir()
        (image or (lambda p: write_image(p, 64, 48)))(folder / "a.jpg")
        write_image(folder / "b.jpg", 64, 48)
        text = f"<annotation><filename>{filename}</filename>{size}{objects}</annotation>"
        (folder / "a.xml").write_text(text if xml is None else xml)
        (folder / "b.xml").write_text(f"<annotation><filename>b.jpg</filename>{SIZE}{GOOD_OBJECT}</annotation>")
        extra = {"names": names} if names else {}
        return _config(tmp, {"format": "voc", "train": {"annotations": str(folder)}, **extra})

    return write


def _coco_doc(images: list | None = None, annotations: list | None = None) -> dict:
    good_images = [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48}]
    good_annotations = [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 1, 8, 8]}]
    return {
        "images": good_images + (images or []),
        "annotations": good_annotations + (annotations or []),
        "categories": [{"id": 3, "name": "cat"}],
    }


def coco(images: list | None = None, annotations: list | None = None, *, drop: str | None = None,
         text: str | None = None, data: dict | None = None) -> Writer:  # fmt: skip
    """`coco/c.json` with a good image `a.jpg` (id 1) plus the case's images/annotations;
    `drop` removes a top-level key, `text` replaces the whole file."""

    def write(tmp: Path) -> Path:
        folder = tmp / "coco"
        write_image(folder / "a.jpg", 64, 48)
        write_image(folder / "b.jpg", 64, 48)
        doc = _coco_doc(images, annotations)
        doc.pop(drop, None)
        (folder / "c.json").write_text(json.dumps(doc, indent=1) if text is None else text)
        train = {"annotations": str(folder / "c.json"), "images": str(folder)}
        return _config(tmp, {"format": "coco", "train": train, **(data or {})})

    return write


def image_b(**entry: object) -> list:
    """A second COCO image entry (id 2, `b.jpg`) with fields replaced by `entry`."""
    return [{"id": 2, "file_name": "b.jpg", "width": 64, "height": 48, **entry}]


def ann(**fields: object) -> list:
    """A second COCO annotation (id 2, on image 1) with fields replaced by `fields`."""
    return [{"id": 2, "image_id": 1, "category_id": 3, "bbox": [2, 2, 8, 8], **fields}]


def yolo(lines: str | bytes) -> Writer:
    """YOLO labels `labels/a.txt` (the case) and `labels/b.txt` (good), classes cat, dog."""

    def write(tmp: Path) -> Path:
        for name in ("a", "b"):
            write_image(tmp / f"images/{name}.jpg", 64, 48)
        (tmp / "labels").mkdir()
        (tmp / "labels/b.txt").write_text("0 0.5 0.5 0.2 0.2\n")
        path = tmp / "labels/a.txt"
        path.write_bytes(lines if isinstance(lines, bytes) else lines.encode())
        train = {"annotations": str(tmp / "labels"), "images": str(tmp / "images")}
        return _config(tmp, {"format": "yolo", "names": ["cat", "dog"], "train": train})

    return write


def via(filename: str = "a.jpg", shape: dict | None = None, doc: dict | None = None) -> Writer:
    """`via/v.json` with an entry for `filename` (one region of `shape`) and a good `b.jpg`."""

    def write(tmp: Path) -> Path:
        folder = tmp / "via"
        for name in ("a", "b"):
            write_image(folder / f"{name}.jpg", 64, 48)
        rect = {"name": "rect", "x": 1, "y": 1, "width": 8, "height": 8}

        def entry(name: str, region: dict) -> dict:
            return {"filename": name, "size": 1, "regions": [
                {"shape_attributes": region, "region_attributes": {"class": "cat"}}]}  # fmt: skip

        content = doc or {"a": entry(filename, shape or rect), "b": entry("b.jpg", rect)}
        (folder / "v.json").write_text(json.dumps(content))
        train = {"annotations": str(folder / "v.json"), "images": str(folder)}
        return _config(tmp, {"format": "via", "train": train})

    return write


def masks(mask: np.ndarray | None) -> Writer:
    """Semantic masks (values 0, 255): images a, b; `masks/a.png` is the case (None: absent)."""

    def write(tmp: Path) -> Path:
        (tmp / "masks").mkdir()
        for name in ("a", "b"):
            write_image(tmp / f"images/{name}.png", 16, 8)
        cv2.imwrite(str(tmp / "masks/b.png"), np.zeros((8, 16), np.uint8))
        if mask is not None:
            cv2.imwrite(str(tmp / "masks/a.png"), mask)
        train = {"annotations": str(tmp / "masks"), "images": str(tmp / "images")}
        data = {"format": "masks", "names": ["membrane", "cell"], "mask_values": [0, 255]}
        return _config(tmp, {**data, "train": train})

    return write


def config_text(text: str) -> Writer:
    """A config file of the given text."""

    def write(tmp: Path) -> Path:
        path = tmp / "config.yaml"
        path.write_text(text)
        return path

    return write


def model(content: Callable[[Path], None]) -> Writer:
    """A `.keras` model file `model.keras` written by `content`, beside a config whose val
    split is a good COCO set (evaluation reads the data before the model)."""

    def write(tmp: Path) -> Path:
        config = coco()(tmp)
        data = load_config(config).data.model_dump(exclude_defaults=True)
        _config(tmp, {**data, "val": data["train"], "names": ["cat"]})
        content(tmp / "model.keras")
        return config

    return write


def _keras_file(path: Path) -> None:
    """A valid `.keras` file of a plain Keras model (no detseg task's)."""
    import keras

    keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)]).save(path)


def _detseg_model(kind: str, num_classes: int) -> Callable[[Path], None]:
    """A `.keras` file of a tiny detseg model of task `kind` with `num_classes` classes."""

    def write(path: Path) -> None:
        from detseg.tasks import TASKS

        anchors = [[4.0 * (i + 1)] * 2 for i in range(9)]
        small = {"model.backbone": "darknet_tiny", "model.backbone_width": 0.125, "model.input_size": 32}
        cfg = load_config(None, {"model.kind": kind, **small, **({"model.yolo.anchors": anchors} if kind == "yolov3" else {})})
        TASKS[kind].build_model(cfg, num_classes).save(path)

    return write


def _model_before_pixel_scaling(path: Path) -> None:
    """A one-class detector as detseg saved them when models took 0..1 images: its backbone
    starts at the raw Input, with no "pixels" layer scaling 0..255."""
    import keras

    from detseg.heads import YoloDetector

    image = keras.Input((32, 32, 3), name="image")
    p4 = keras.layers.Conv2D(4, 3, strides=16, padding="same")(image)
    p5 = keras.layers.Conv2D(4, 3, strides=2, padding="same")(p4)
    backbone = keras.Model(image, {"P4": p4, "P5": p5}, name="backbone")
    anchors = [[4.0 * (i + 1)] * 2 for i in range(6)]
    YoloDetector(backbone, 1, anchors, levels=("P4", "P5"), width=0.125).save(path)


def _truncated_keras_file(path: Path) -> None:
    _keras_file(path)
    path.write_bytes(path.read_bytes()[:300])


def _evaluate(config: Path) -> list[str]:
    return ["evaluate", str(config.parent / "model.keras")]


def _evaluate_library(config: Path) -> object:
    from detseg import evaluate_model

    return evaluate_model(config.parent / "model.keras")


def _info(config: Path) -> list[str]:
    return ["info", str(config)]


def _load_train_split(config: Path) -> object:
    return load_split(load_config(config).data, "train")


def not_an_image(path: Path) -> None:
    path.write_text("hello, I am text in a .jpg")


def truncated_image(path: Path) -> None:
    write_image(path, 64, 48)
    path.write_bytes(path.read_bytes()[:20])  # cut inside the JPEG header


def other_size_image(path: Path) -> None:
    write_image(path, 32, 48)


def inverted_mask() -> np.ndarray:
    mask = np.zeros((8, 16), np.uint8)
    mask[0, 0] = 7  # neither 0 nor 255
    return mask


# === The corpus ===


@dataclass(frozen=True)
class Case:
    """One defect: what writes it, the file its error names (relative to the case folder; with
    `:line`/id text), a fragment of the message, and what lenient loading counts (None: a
    defect of the whole file, an error in both modes)."""

    id: str
    write: Writer
    names: str
    expected: str
    lenient: str | None = None
    cli: Callable[[Path], list[str]] = _info  # the command that meets the defect
    library: Callable[[Path], object] = _load_train_split  # the same through the library


CASES = [
    # Images with an image extension that are not images, missing, or of another size.
    Case("image-not-an-image", voc(GOOD_OBJECT, image=not_an_image), "voc/a.jpg", "not a readable image", "skipped 1 x image skipped: not a readable image"),
    Case("image-truncated", voc(GOOD_OBJECT, image=truncated_image), "voc/a.jpg", "not a readable image", "skipped 1 x image skipped"),
    Case("image-missing", voc(GOOD_OBJECT, image=lambda p: None), "voc/a.jpg", "image of a.xml not found", "skipped 1 x image skipped: image of ... not found"),
    Case("image-other-size", voc(GOOD_OBJECT, image=other_size_image), "voc/a.jpg", "image is 32x48 but a.xml says 64x48", "skipped 1 x image skipped: image is NxN"),
    # VOC XML.
    Case("voc-no-size", voc(GOOD_OBJECT, size=""), "voc/a.xml", "XML without a numeric <size>", "clipped 1 x XML without a numeric <size>"),
    Case("voc-no-bndbox", voc(_obj("cat", None)), "voc/a.xml object #1", "object without a numeric <bndbox>", "skipped 1 x object without a numeric <bndbox>"),
    Case("voc-non-numeric", voc(_obj("cat", (1, "one", 9, 9))), "voc/a.xml object #1", "object without a numeric <bndbox>", "skipped 1 x object without a numeric <bndbox>"),
    Case("voc-no-name", voc(_obj(None, (1, 1, 9, 9))), "voc/a.xml object #1", "object without a <name>", "skipped 1 x object without a <name>"),
    Case("voc-inverted", voc(_obj("cat", (30, 5, 25, 9))), "voc/a.xml", "inverted box (x2<x1 or y2<y1) [30.0, 5.0, 25.0, 9.0]", "skipped 1 x inverted box"),
    Case("voc-negative", voc(_obj("cat", (-20, -20, -5, -5))), "voc/a.xml", "box entirely outside the image [-20.0", "skipped 1 x box entirely outside the image"),
    Case("voc-beyond-image", voc(_obj("cat", (80, 50, 90, 60))), "voc/a.xml", "box entirely outside the image [80.0, 50.0, 90.0, 60.0] in a 64x48 image", "skipped 1 x box entirely outside"),
    Case("voc-non-finite", voc(_obj("cat", (1, 1, "nan", 9))), "voc/a.xml", "box with non-finite coordinates", "skipped 1 x box with non-finite coordinates"),
    Case("voc-unknown-class", voc(_obj("dog", (1, 1, 9, 9)), names=["cat"]), "voc/a.xml", "object of unknown class 'dog'", "skipped 1 x object of unknown class 'dog'"),
    Case("voc-not-xml", voc("", xml="<annotation><size>"), "voc/a.xml", "XML does not parse at line 1"),
    Case("voc-not-voc", voc("", xml="<svg></svg>"), "voc/a.xml", "not a VOC annotation (root element <svg>"),
    Case("voc-path-traversal", voc(GOOD_OBJECT, filename="../../etc/passwd"), "voc/a.xml", "image file name '../../etc/passwd' is outside the image folder", "skipped 1 x image skipped: image file name ... is outside"),
    Case("voc-absolute-path", voc(GOOD_OBJECT, filename="/etc/hostname"), "voc/a.xml", "image file name '/etc/hostname' is outside the image folder", "skipped 1 x image skipped: image file name ... is outside"),
    # COCO JSON.
    Case("coco-not-json", coco(text='{"images": [\n  {"id": 1,}\n]}'), "coco/c.json", "not valid JSON at line 2 column 12"),
    Case("coco-no-images-key", coco(drop="images"), "coco/c.json", "needs a list 'images' at the top level"),
    Case("coco-no-categories-key", coco(drop="categories"), "coco/c.json", "needs a list 'categories' at the top level"),
    Case("coco-image-without-id", coco(image_b(id=None)), "coco/c.json image #1", "image entry without an integer or text 'id'", "skipped 1 x image entry without an integer or text 'id'"),
    Case("coco-image-without-file-name", coco(image_b(file_name=None)), "coco/c.json image id 2", "image entry has no 'file_name'", "skipped 1 x image skipped: image entry has no ..."),
    Case("coco-duplicate-image-id", coco(image_b(id=1)), "coco/c.json image #1 (id 1)", "duplicated image id", "skipped 1 x duplicated image id"),
    Case("coco-duplicate-annotation-id", coco(annotations=ann(id=1)), "coco/c.json annotation #1 (id 1)", "duplicated annotation id", "skipped 1 x duplicated annotation id"),
    Case("coco-unknown-image", coco(annotations=ann(image_id=9)), "coco/c.json annotation #1 (id 2)", "annotation of an unknown image id 9", "skipped 1 x annotation of an unknown image id"),
    Case("coco-unknown-category", coco(annotations=ann(category_id=4)), "coco/c.json annotation #1 (id 2)", "annotation of an unknown category id 4", "skipped 1 x annotation of an unknown category id"),
    Case("coco-bbox-wrong-length", coco(annotations=ann(bbox=[1, 2, 3])), "coco/c.json annotation id 2", "malformed bbox (need 4 numbers) or area: bbox [1, 2, 3]", "skipped 1 x annotation with a malformed bbox"),
    Case("coco-bbox-wrong-type", coco(annotations=ann(bbox="1,2,3,4")), "coco/c.json annotation id 2", "malformed bbox (need 4 numbers) or area: bbox '1,2,3,4'", "skipped 1 x annotation with a malformed bbox"),
    Case("coco-negative-size-bbox", coco(annotations=ann(bbox=[20, 20, -5, 4])), "coco/c.json image id 1", "inverted box", "skipped 1 x inverted box"),
    Case("coco-path-traversal", coco(image_b(file_name="../../etc/passwd")), "coco/c.json image id 2", "image file name '../../etc/passwd' is outside the image folder", "skipped 1 x image skipped: image file name ... is outside"),
    Case("coco-absolute-path", coco(image_b(file_name="/etc/hostname")), "coco/c.json image id 2", "image file name '/etc/hostname' is outside the image folder", "skipped 1 x image skipped: image file name ... is outside"),
    Case("coco-empty-dataset", coco(text=json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "cat"}]})), "coco/c.json", "the train split has no samples"),
    Case("coco-classes-differ", coco(data={"names": ["dog"]}), "coco/c.json", "data.names ['dog'] differ from the classes in the file: ['cat']"),
    # YOLO txt.
    Case("yolo-too-few-fields", yolo("0 0.5 0.5\n"), "labels/a.txt:1", "wrong number of values", "skipped 1 x label line with a wrong number of values"),
    Case("yolo-value-above-1", yolo("0 0.5 0.5 0.2 0.2\n1 1.5 0.5 0.2 0.2\n"), "labels/a.txt:2", "values outside 0..1", "clipped 1 x label line with values outside 0..1"),
    Case("yolo-negative-value", yolo("0 0.5 0.5 -0.2 0.2\n"), "labels/a.txt:1", "values outside 0..1", "clipped 1 x label line with values outside 0..1"),
    Case("yolo-class-out-of-range", yolo("2 0.5 0.5 0.2 0.2\n"), "labels/a.txt:1", "class id outside 0..1", "skipped 1 x label line with a class id outside 0..1"),
    Case("yolo-not-numbers", yolo("cat 0.5 0.5 0.2 0.2\n"), "labels/a.txt:1", "label line that is not numbers", "skipped 1 x label line that is not numbers"),
    Case("yolo-not-text", yolo(b"0 0.5 0.5 0.2 0.2\n\xff\xfe\x00"), "labels/a.txt", "label file is not UTF-8 text", "skipped 1 x image skipped: label file is not UTF-N text"),
    # VIA JSON.
    Case("via-version-3", via(doc={"project": {}, "config": {}, "metadata": {}}), "via/v.json", "VIA 3 projects are not supported"),
    Case("via-unknown-layout", via(doc={"a": {"file": "a.jpg"}}), "via/v.json", "not a VIA 2.x file"),
    Case("via-point-region", via(shape={"name": "point", "cx": 1, "cy": 1}), "via/v.json image 'a.jpg' region #1", "region without a box shape", "skipped 1 x region without a box shape"),
    Case("via-path-traversal", via(filename="../secret.jpg"), "via/v.json image '../secret.jpg'", "is outside the image folder", "skipped 1 x image skipped: image file name ... is outside"),
    # Semantic masks.
    Case("mask-wrong-size", masks(np.zeros((4, 16), np.uint8)), "masks/a.png", "mask is 16x4 but its image is 16x8", "skipped 1 x image skipped: mask is NxN but its image is NxN"),
    Case("mask-undeclared-values", masks(inverted_mask()), "masks/a.png", "mask with pixel values outside [0, 255] (those pixels are ignored): [7]", "clipped 1 x mask with pixel values outside [0, 255]"),
    Case("mask-missing", masks(None), "images/a.png", "image without a mask", "skipped 1 x image without a mask"),
    # Configs.
    Case("config-unknown-key", config_text("data:\n  formt: coco\n"), "config.yaml", "unknown key 'data.formt' (did you mean 'format'?)"),
    Case("config-wrong-type", config_text("data:\n  workers: many\n"), "config.yaml", "data.workers: input should be a valid integer"),
    # Model files (evaluation loads them after the data).
    Case("model-not-a-model", model(not_an_image), "model.keras", "cannot load the model", cli=_evaluate, library=_evaluate_library),
    Case("model-truncated", model(_truncated_keras_file), "model.keras", "cannot load the model", cli=_evaluate, library=_evaluate_library),
    Case("model-of-another-task", model(_keras_file), "model.keras", "this is a Sequential, not a", cli=_evaluate, library=_evaluate_library),
    Case("model-of-another-detseg-task", model(_detseg_model("classifier", 2)), "model.keras", "this is a ImageClassifier, not a YoloDetector", cli=_evaluate, library=_evaluate_library),
    Case("model-before-pixel-scaling", model(_model_before_pixel_scaling), "model.keras", "no 'pixels' layer: it was saved by an older detseg that fed models 0..1 images", cli=_evaluate, library=_evaluate_library),
    Case("model-classes-differ", model(_detseg_model("yolov3", 2)), "model.keras", "the model predicts 2 classes but its config names 1: ['cat']", cli=_evaluate, library=_evaluate_library),
    Case("config-missing-data-path", config_text("data:\n  format: voc\n  train:\n    annotations: /nonexistent/voc\n"), "/nonexistent/voc", "VOC annotation folder not found"),
]


def _where(case: Case, tmp_path: Path) -> str:
    return case.names if case.names.startswith("/") else f"{tmp_path}/{case.names}"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_is_one_line_naming_the_file(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture):
    config = case.write(tmp_path)
    with pytest.raises(DetsegError) as exc:
        case.library(config)
    message = str(exc.value)
    assert "\n" not in message
    assert message.startswith(f"{_where(case, tmp_path)}: "), message
    assert case.expected in message

    assert main(case.cli(config)) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [f"detseg: error: {message}"], err  # one line, no traceback

    if case.lenient is not None:
        lenient = load_split(load_config(config, {"data.strict": False}).data, "train")
        assert lenient.samples, "the good items are kept"
        assert main(["info", str(config), "--set", "data.strict=false"]) == 0
        out = capsys.readouterr().out
        assert case.lenient in out, out
        assert any(line.startswith(case.lenient) for line in lenient.summary.problem_lines())


def test_the_corpus_covers_every_reader_and_kind_of_defect():
    """Adding a case is one line; this keeps the corpus from shrinking below the issue's 30."""
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)
    prefixes = {c.id.split("-")[0] for c in CASES}
    assert {"image", "voc", "coco", "yolo", "via", "mask", "config", "model"} <= prefixes


def test_convert_stops_at_a_bad_item_and_with_lenient_skips_and_reports_it(tmp_path, capsys):
    """`detseg convert` reads strict like training; `--lenient` converts the rest and says what it left out."""
    voc(_obj("cat", (30, 5, 25, 9)))(tmp_path)
    args = ["convert", "--from", "voc", "--to", "coco", str(tmp_path / "voc"), str(tmp_path / "out.json")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"detseg: error: {tmp_path}/voc/a.xml: inverted box") and err.count("\n") == 1
    assert not (tmp_path / "out.json").exists()
    assert main([*args, "--lenient"]) == 0
    out = capsys.readouterr().out
    assert "voc -> coco: 2 images, 1 boxes written" in out
    assert "skipped 1 x inverted box (x2<x1 or y2<y1) (e.g. a.xml)" in out
