"""Mixed precision and determinism (`detseg.engine.precision`): which policy a device gets,
a mixed-precision train step of every model kind with float32 outputs and loss, and op
determinism switched on and off again."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from detseg.config import load_config
from detseg.engine import precision
from detseg.engine.precision import cpu_has_bf16, mixed_policy, set_op_determinism, set_precision
from detseg.engine.train import make_optimizer
from detseg.tasks import task_for


@pytest.fixture
def global_policy():
    """Restore Keras's global dtype policy after the test, whatever it set."""
    before = keras.mixed_precision.global_policy().name
    yield
    keras.mixed_precision.set_global_policy(before)


def test_bf16_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512bw\n\nprocessor\t: 1\nflags\t\t: fpu sse avx512f\n")
    assert not cpu_has_bf16(cpuinfo)
    for flag in ("avx512_bf16", "amx_bf16"):
        cpuinfo.write_text(f"processor\t: 0\nflags\t\t: fpu sse avx512f {flag} avx512_vnni\nbugs\t\t: spectre\n")
        assert cpu_has_bf16(cpuinfo), flag
    cpuinfo.write_text("bugs\t\t: avx512_bf16\n")  # only the flags line counts
    assert not cpu_has_bf16(cpuinfo)
    assert not cpu_has_bf16(tmp_path / "missing")


@pytest.mark.parametrize(
    ("devices", "capability", "cpu_bf16", "expected"),
    [
        (["tpu:0"], None, False, "mixed_bfloat16"),
        (["gpu:0"], (8, 0), False, "mixed_bfloat16"),
        (["gpu:0", "gpu:1"], (9, 0), False, "mixed_bfloat16"),
        (["gpu:0"], (7, 5), True, "mixed_float16"),  # a Turing GPU: no bfloat16, whatever the CPU
        (["gpu:0"], None, True, "mixed_float16"),  # capability unknown: float16 is safe
        (["cpu:0"], None, True, "mixed_bfloat16"),
        (["cpu:0"], None, False, "mixed_float16"),
    ],
)
def test_the_policy_follows_the_device(monkeypatch, devices, capability, cpu_bf16, expected):
    monkeypatch.setattr(keras.distribution, "list_devices", lambda device_type=None: devices)
    monkeypatch.setattr(precision, "_gpu_capability", lambda: capability)
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: cpu_bf16)
    assert mixed_policy() == expected


def test_set_precision_sets_float32_when_off(global_policy, caplog):
    with caplog.at_level("INFO", logger="detseg"):
        chosen = set_precision(True)
    assert keras.mixed_precision.global_policy().name == chosen == mixed_policy()
    assert chosen in caplog.text  # the log names the policy
    assert set_precision(False) == "float32"  # a later run without mixed precision
    assert keras.mixed_precision.global_policy().name == "float32"


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow's op determinism")
def test_op_determinism_is_switched_on_and_off():
    from tensorflow.python.framework import config as tf_config

    assert not tf_config.is_op_determinism_enabled()
    try:
        set_op_determinism(True)
        assert tf_config.is_op_determinism_enabled()
    finally:
        set_op_determinism(False)
    assert not tf_config.is_op_determinism_enabled()


# === A mixed-precision train step of every model kind ===

SHAPES = {"num_train": 8, "num_val": 2, "image_size": 96, "min_objects": 1, "max_objects": 3, "min_size": 16, "max_size": 28}
MODELS = {
    "yolov3": {"backbone": "darknet_tiny", "backbone_width": 0.25, "input_size": 64, "yolo": {"levels": ["P4", "P5"], "width": 0.25}},
    "classifier": {"backbone": "darknet_tiny", "backbone_width": 0.25, "input_size": 32},
    "unet": {"backbone": "unet", "backbone_width": 0.125, "input_size": 64, "unet": {"depth": 2}},
    "localize": {"backbone": "darknet_tiny", "backbone_width": 0.25, "input_size": 64},
    "fcn": {"background_per_image": 1},
}


def _leaves(tree) -> list:
    return keras.tree.flatten(tree)


@pytest.fixture(scope="module")
def shapes_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("shapes")


def _first_batch_step(kind: str, cache, policy: str):
    """Under `policy`: a new model of `kind`, compiled as training compiles it, takes one
    (eager) train step on its first training batch; returns the model, the batch and the logs."""
    keras.mixed_precision.set_global_policy(policy)
    data = {"builtin": "shapes", "cache_dir": str(cache), "shapes": SHAPES, "workers": 0, "crops": kind == "classifier"}
    cfg = load_config(None, {"data": data, "model": {"kind": kind, **MODELS[kind]}, "train": {"batch_size": 2}})
    task = task_for(cfg)
    train_data = task.load_data(cfg, "train")
    cfg = task.prepare(cfg, train_data)
    model = task.build_model(cfg, len(cfg.data.names))
    loader = task.train_loader(cfg, model, train_data)
    task.compile(model, make_optimizer(cfg.train, len(loader)))
    model.run_eagerly = True  # the same ops without tracing a graph: a fast test
    x, y = loader[0]
    logs = model.train_on_batch(x, y, return_dict=True)
    return model, x, y, logs


# TensorFlow only: eager steps under JAX compile every op (minutes for the five kinds).
@pytest.mark.parametrize("kind", list(MODELS))
def test_a_mixed_bfloat16_step_keeps_outputs_and_loss_float32(kind, shapes_cache, global_policy):
    model, x, y, logs = _first_batch_step(kind, shapes_cache, "mixed_bfloat16")
    assert all(np.isfinite(float(v)) for v in logs.values()), logs
    # the trunk computes in bfloat16 ...
    assert {layer.compute_dtype for layer in model._flatten_layers() if isinstance(layer, keras.layers.Conv2D)} >= {"bfloat16"}
    # ... the outputs, the loss and the decoded predictions are float32
    outputs = model(x, training=False)
    assert {str(keras.backend.standardize_dtype(t.dtype)) for t in _leaves(outputs)} == {"float32"}, kind
    loss = model.compute_loss(x, y, model(x, training=True), training=True)
    assert keras.backend.standardize_dtype(loss.dtype) == "float32"
    decoded = [np.asarray(t) for t in _leaves(model.predict_on_batch(x))]
    assert all(t.dtype != np.float16 and str(t.dtype) != "bfloat16" for t in decoded), kind


def test_mixed_float16_compiles_with_loss_scaling(shapes_cache, global_policy):
    """Keras's compile wraps the optimizer of a mixed_float16 model in a LossScaleOptimizer;
    a step through it updates the weights and keeps the detector's outputs float32."""
    model, x, _, logs = _first_batch_step("yolov3", shapes_cache, "mixed_float16")
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert np.isfinite(logs["loss"])
    assert {str(keras.backend.standardize_dtype(t.dtype)) for t in _leaves(model(x))} == {"float32"}
