"""No file detseg reads can run code: `.keras` models load in Keras safe mode (a Lambda layer's
Python function is refused) unless the user passes `--unsafe`; YAML is read only through
`safe_load`; nothing in the library unpickles."""

from __future__ import annotations

import ast
from pathlib import Path

import cv2
import keras
import numpy as np
import pytest

from detseg.cli import main
from detseg.config import config_from_dict, dump_config, load_config, parse_override
from detseg.engine.runs import load_model
from detseg.errors import DetsegError

PACKAGE = Path(__file__).resolve().parents[2] / "detseg"


@pytest.fixture
def lambda_run(tmp_path) -> Path:
    """A run folder whose best.keras holds a Lambda layer: its bytecode would run on loading."""
    inputs = keras.Input((32, 32, 3))
    outputs = keras.layers.Lambda(lambda x: x * 2.0)(inputs)
    keras.Model(inputs, outputs).save(tmp_path / "best.keras")
    dump_config(config_from_dict({"data": {"names": ["a", "b"]}, "model": {"kind": "classifier", "input_size": 32}}), tmp_path / "config.yaml")
    return tmp_path


def test_a_lambda_model_is_refused_unless_unsafe(lambda_run):
    path = lambda_run / "best.keras"
    with pytest.raises(DetsegError) as info:
        load_model(path)
    message = str(info.value)
    assert message.startswith(f"{path}: refused to load: ") and "--unsafe" in message
    assert "\n" not in message
    model = load_model(path, unsafe=True)
    np.testing.assert_allclose(model(np.ones((1, 32, 32, 3), "float32")), 2.0)  # the lambda ran


@pytest.mark.parametrize("command", ["export", "predict"])
def test_the_cli_refuses_a_lambda_model_in_one_line_and_loads_it_with_unsafe(lambda_run, command, capsys):
    image = lambda_run / "frame.png"
    cv2.imwrite(str(image), np.zeros((32, 32, 3), np.uint8))
    args = {"export": ["--format", "savedmodel"], "predict": ["--source", str(image)]}[command]
    assert main(["-q", command, str(lambda_run), *args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"detseg: error: {lambda_run / 'best.keras'}: refused to load")
    assert "--unsafe" in lines[0]
    # With --unsafe it loads; the task then refuses a model that is not a classifier.
    assert main(["-q", command, str(lambda_run), *args, "--unsafe"]) == 2
    assert "this is a Functional, not a ImageClassifier" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args", [["train", "c.yaml"], ["evaluate", "run"], ["predict", "run", "--source", "0"], ["export", "run", "--format", "onnx"]]
)
def test_every_command_that_loads_a_model_takes_unsafe_off_by_default(args):
    from detseg.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(args).unsafe is False
    assert parser.parse_args([*args, "--unsafe"]).unsafe is True


def test_yaml_with_a_python_tag_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    config = tmp_path / "evil.yaml"
    config.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(DetsegError, match="not valid YAML"):
        load_config(config)
    with pytest.raises(DetsegError, match="value is not valid YAML"):  # --set name=...
        parse_override(f"name=!!python/object/apply:os.system ['touch {marker}']")
    assert not marker.exists()


# Calls that deserialise code or arbitrary objects, and what makes each one safe.
_UNPICKLERS = {"pickle", "cPickle", "dill", "joblib", "marshal", "shelve", "cloudpickle"}
_UNSAFE_YAML = {"load", "load_all", "full_load", "full_load_all", "unsafe_load", "unsafe_load_all"}


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _problems(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"imports {m}" for m in modules if m.split(".")[0] in _UNPICKLERS]
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        name, owner = node.func.attr, ast.unparse(node.func.value)
        if owner == "yaml" and name in _UNSAFE_YAML:
            found.append(f"yaml.{name}")
        if name in {"load", "loadtxt"} and owner in {"np", "numpy"}:
            allow = _keyword(node, "allow_pickle")
            if name == "load" and not (isinstance(allow, ast.Constant) and allow.value is False):
                found.append("np.load without allow_pickle=False")
        if name == "load_model" and owner in {"keras.saving", "keras.models"} and _keyword(node, "safe_mode") is None:
            found.append("keras load_model without an explicit safe_mode")
        if name == "enable_unsafe_deserialization":
            found.append("enables Keras unsafe deserialization")
    return found


def test_the_source_scan_catches_each_unsafe_call():
    bad = "import pickle\nyaml.load(s)\nnp.load(p)\nkeras.saving.load_model(p)\nkeras.config.enable_unsafe_deserialization()\n"
    assert len(_problems(ast.parse(bad))) == 5
    good = "yaml.safe_load(s)\nnp.load(p, allow_pickle=False)\nkeras.saving.load_model(p, safe_mode=True)\n"
    assert _problems(ast.parse(good)) == []


def test_nothing_in_detseg_unpickles_or_loads_yaml_or_models_unsafely():
    problems = {
        str(path.relative_to(PACKAGE)): found
        for path in sorted(PACKAGE.rglob("*.py"))
        if (found := _problems(ast.parse(path.read_text(encoding="utf-8"))))
    }
    assert problems == {}
