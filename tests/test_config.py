"""Config: YAML round trip, dotted overrides, and the messages of bad keys and types."""

from __future__ import annotations

import pytest
import yaml

from detseg.config import (
    MODEL_KINDS,
    ClassifierModelConfig,
    Config,
    DetectorModelConfig,
    dump_config,
    load_config,
    parse_override,
)
from detseg.errors import DetsegError


def write(tmp_path, text: str):
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


def test_defaults_are_documented_and_every_field_has_a_default():
    def walk(model):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
            assert not field.is_required(), f"{model.__name__}.{name} has no default"
            ann = field.annotation
            if isinstance(ann, type) and hasattr(ann, "model_fields"):
                walk(ann)

    walk(Config)
    for section in MODEL_KINDS.values():  # the model section is a union over the kinds
        walk(section)


def test_yaml_round_trip(tmp_path):
    cfg = load_config(
        write(
            tmp_path,
            "train:\n  epochs: 7\n  augment:\n    hflip: 0.0\nmodel:\n  yolo:\n    anchors: [[10, 13], [16, 30]]\n",
        )
    )
    assert cfg.name == "exp"  # the run name defaults to the file stem
    out = dump_config(cfg, tmp_path / "resolved.yaml")
    again = load_config(out)
    assert again == cfg
    assert yaml.safe_load(out.read_text())["train"]["epochs"] == 7


@pytest.mark.parametrize(
    ("text", "key", "value"),
    [
        ("train.epochs=3", "train.epochs", 3),
        ("train.lr=0.001", "train.lr", 0.001),
        ("train.augment.hflip=0.25", "train.augment.hflip", 0.25),
        ("data.names=[a, b, c]", "data.names", ["a", "b", "c"]),
        ("train.resume=true", "train.resume", True),
        ("model.weights=null", "model.weights", None),
        ("name=my run", "name", "my run"),
    ],
)
def test_parse_override(text, key, value):
    assert parse_override(text) == (key, value)


def test_overrides_apply_to_nested_sections(tmp_path):
    cfg = load_config(
        write(tmp_path, "train:\n  epochs: 7\n"),
        overrides={
            "train.epochs": 3,
            "train.augment.hflip": 0.0,
            "data.names": ["x", "y"],
            "train.resume": True,
        },
    )
    assert cfg.train.epochs == 3
    assert cfg.train.augment.hflip == 0.0
    assert cfg.data.names == ["x", "y"]
    assert cfg.train.resume is True


def test_config_is_frozen():
    cfg = load_config(None)
    with pytest.raises(Exception, match="frozen"):
        cfg.train.epochs = 5  # type: ignore[misc]


def test_unknown_key_names_file_path_and_suggestion(tmp_path):
    path = write(tmp_path, "train:\n  epoch: 3\n")
    with pytest.raises(DetsegError) as info:
        load_config(path)
    msg = str(info.value)
    assert msg.startswith(str(path))
    assert "'train.epoch'" in msg
    assert "did you mean 'epochs'?" in msg


def test_unknown_top_level_section(tmp_path):
    with pytest.raises(DetsegError, match=r"unknown key 'trian' \(did you mean 'train'\?\)"):
        load_config(write(tmp_path, "trian:\n  epochs: 3\n"))


def test_wrong_type_names_expected_type(tmp_path):
    with pytest.raises(
        DetsegError, match=r"train\.epochs: input should be a valid integer.*'three'"
    ):
        load_config(write(tmp_path, "train:\n  epochs: three\n"))


def test_input_size_must_be_multiple_of_32(tmp_path):
    with pytest.raises(
        DetsegError, match=r"model\.input_size: must be a multiple of 32 \(got 300\)"
    ):
        load_config(write(tmp_path, "model:\n  input_size: 300\n"))


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(DetsegError, match=r"exp\.yaml: not valid YAML at line 3"):
        load_config(write(tmp_path, "train:\n  epochs: 3\n  lr: 0.1: 2\n"))
    with pytest.raises(DetsegError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(DetsegError, match="expected a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


@pytest.mark.parametrize("bad", ["train.epochs", "=3", ""])
def test_malformed_override(bad):
    with pytest.raises(DetsegError, match="key=value"):
        parse_override(bad)


def test_override_into_a_scalar_is_an_error(tmp_path):
    with pytest.raises(DetsegError, match="train.epochs is not a section"):
        load_config(write(tmp_path, "train:\n  epochs: 3\n"), overrides={"train.epochs.x": 1})


def test_yaml_1_1_exponent_string_still_validates_as_float():
    # YAML 1.1 reads "1e-3" (no dot) as a string; the float field still accepts it.
    assert load_config(None, overrides=dict([parse_override("train.lr=1e-3")])).train.lr == 0.001


def test_every_shipped_config_validates():
    from tests.conftest import REPO_ROOT

    paths = sorted((REPO_ROOT / "configs").glob("*.yaml"))
    assert paths, "no configs shipped"
    for path in paths:
        cfg = load_config(path)
        assert cfg.name == path.stem  # run folders are named after their config file


def test_set_config_value_writes_back_a_valid_file(tmp_path):
    from detseg.config import set_config_value

    path = write(tmp_path, "train:\n  epochs: 7\n")
    set_config_value(path, "model.yolo.anchors", [[10.0, 12.5], [30.0, 40.0]])
    cfg = load_config(path)
    assert cfg.model.yolo.anchors == [[10.0, 12.5], [30.0, 40.0]]
    assert cfg.train.epochs == 7  # the rest of the file is kept
    with pytest.raises(DetsegError, match="train.epochs"):
        set_config_value(path, "train.epochs", "many")
    assert load_config(path).train.epochs == 7  # a rejected value is never written


def test_model_section_is_chosen_by_kind(tmp_path):
    assert isinstance(load_config(None).model, DetectorModelConfig)  # kind defaults to yolov3
    cfg = load_config(None, {"model.kind": "classifier", "model.dropout": 0.3})
    assert isinstance(cfg.model, ClassifierModelConfig) and cfg.model.dropout == 0.3
    out = dump_config(cfg, tmp_path / "c.yaml")
    assert load_config(out) == cfg  # the union round-trips through YAML


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"model.kind": "classifier", "train.augment.mosaic_p": 0.5}, "train.augment.mosaic_p"),
        ({"model.kind": "classifier", "eval.iou_thr": 0.5}, "eval.iou_thr"),
        ({"model.kind": "classifier", "predict.score_thr": 0.5}, "predict.score_thr"),
        ({"model.kind": "yolov3", "data.crops": True}, "data.crops"),
        ({"model.kind": "yolov3", "predict.rle": True}, "predict.rle"),
    ],
)
def test_a_field_the_kind_would_ignore_is_an_error(overrides, field):
    kind = overrides["model.kind"]
    with pytest.raises(DetsegError, match=f"{field}: not used by model.kind '{kind}'"):
        load_config(None, overrides)


def test_closing_a_mosaic_that_is_off_is_an_error():
    with pytest.raises(DetsegError, match=r"train\.augment: mosaic_close needs mosaic_p > 0"):
        load_config(None, {"train.augment.mosaic_close": 0.2})
    assert load_config(None, {"train.augment.mosaic_close": 0.2, "train.augment.mosaic_p": 0.5}).train.augment.mosaic_close == 0.2


def test_unused_fields_at_their_default_are_accepted(tmp_path):
    """A run's config.yaml holds every field, defaults included: it must load back for any kind."""
    for kind in MODEL_KINDS:
        cfg = load_config(None, {"model.kind": kind})
        assert load_config(dump_config(cfg, tmp_path / f"{kind}.yaml")) == cfg
