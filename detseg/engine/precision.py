"""The numerics of a training run: its mixed-precision policy and TensorFlow op determinism.

`train.mixed_precision: true` picks `mixed_bfloat16` where the device computes in bfloat16
(a TPU, a GPU of compute capability 8.0 or later, a CPU with AVX512-BF16 or AMX-BF16) and
`mixed_float16` elsewhere, which Keras's `compile` pairs with a `LossScaleOptimizer` (float16
gradients underflow without loss scaling; bfloat16 has float32's range and needs none). Every
head keeps its outputs, loss and decoding in float32. `train.deterministic: true` turns on
TensorFlow's op determinism under the TensorFlow backend. Under JAX there is nothing to switch:
XLA's CPU kernels are deterministic (a fixed seed gives identical runs), and on a GPU
determinism is the XLA flag `--xla_gpu_deterministic_ops=true`, which must be in `XLA_FLAGS`
before JAX starts. Both are set for every run, so a mixed-precision or deterministic run does
not leak into the next run of the same process.
"""

from __future__ import annotations

import logging
from pathlib import Path

import keras

__all__ = ["BF16_CPU_FLAGS", "cpu_has_bf16", "mixed_policy", "set_op_determinism", "set_precision"]

log = logging.getLogger("detseg")

BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
"""/proc/cpuinfo flags of a CPU with bfloat16 arithmetic (either is enough)."""
BF16_GPU_CAPABILITY = (8, 0)
"""The first CUDA compute capability with bfloat16 tensor cores (Ampere)."""


def cpu_has_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU lists a bfloat16 instruction set among its flags (False where unknown)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    return any(
        BF16_CPU_FLAGS & set(line.split(":", 1)[1].split())
        for line in text.splitlines()
        if line.startswith("flags") and ":" in line
    )


def _gpu_capability() -> tuple[int, int] | None:
    """The compute capability of the first GPU, as the backend reports it (None where unknown)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        capability = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability") if gpus else None
        return tuple(capability) if capability else None
    if backend == "jax":
        import jax

        capability = getattr(jax.devices("gpu")[0], "compute_capability", None)
        return tuple(int(part) for part in str(capability).split(".")[:2]) if capability else None
    return None


def mixed_policy() -> str:
    """The mixed-precision policy of this machine's training device: `mixed_bfloat16` where it
    computes in bfloat16, `mixed_float16` (with loss scaling) elsewhere."""
    kinds = {device.split(":")[0].lower() for device in keras.distribution.list_devices()}
    if "tpu" in kinds:
        return "mixed_bfloat16"
    if kinds & {"gpu", "cuda"}:
        capability = _gpu_capability()
        return "mixed_bfloat16" if capability and capability >= BF16_GPU_CAPABILITY else "mixed_float16"
    return "mixed_bfloat16" if cpu_has_bf16() else "mixed_float16"


def set_precision(mixed: bool) -> str:
    """Set Keras's global dtype policy for a run (float32 unless `mixed`); returns its name.

    Models built from here on compute in that policy; call it before building the model.
    """
    policy = mixed_policy() if mixed else "float32"
    keras.mixed_precision.set_global_policy(policy)
    if mixed:
        log.info("mixed precision: %s%s", policy, " (with loss scaling)" if policy == "mixed_float16" else "")
    return policy


def set_op_determinism(enabled: bool) -> None:
    """TensorFlow's op determinism on or off (the TensorFlow backend only; see the module
    docstring for JAX). Deterministic kernels are slower, and an op without one raises."""
    if keras.backend.backend() != "tensorflow":
        return
    # TensorFlow's public API can turn determinism on but not off again; its config module can.
    import tensorflow as tf
    from tensorflow.python.framework import config as tf_config

    if enabled:
        tf.config.experimental.enable_op_determinism()
    elif tf_config.is_op_determinism_enabled():
        tf_config.disable_op_determinism()
