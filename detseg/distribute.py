"""Data-parallel training over the local devices (`train.distribution: data_parallel`), and the
cross-replica count a loss normalises by.

JAX: `keras.distribution.DataParallel` replicates the variables on every device and shards each
batch over them; the jitted train step sees the whole (global) batch, so a loss needs nothing.
TensorFlow: `tf.distribute.MirroredStrategy`; each replica runs the train step on its share of
the batch and Keras sums the replicas' gradients, but it does not rescale a model's own
`compute_loss` (only its built-in `Loss` objects): a loss divides its per-replica sum by the
count over all replicas (`cross_replica_sum`), so that the replicas' losses add up to the loss
of the whole batch. This module holds the only TensorFlow calls outside export, imported lazily.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import keras

from detseg.errors import DetsegError

__all__ = ["Placement", "cross_replica_sum", "local_devices", "placement", "replicas_in_sync"]

log = logging.getLogger("detseg")


@dataclass(frozen=True)
class Placement:
    """Where a run trains: its devices and the scope each part of training runs in.

    `building()`: creating or loading the model and compiling it (the variables are placed on
    every device). `fitting()`: `Model.fit`. `any_batch(model)`: inference with `model` on
    batches whose size need not divide by the devices (validation inside `fit`), on one device.
    JAX shards every batch of the distribution in force, so it is in force to build and fit and
    left for inference (the replicated variables serve a plain jitted call). A TensorFlow model
    keeps the strategy it was built under; for inference it is detached from it, because Keras
    3.15's `predict_on_batch` under a strategy runs the whole batch on every replica and returns
    every copy (`Model.predict`, which splits the batch, is right).
    """

    devices: tuple[str, ...]
    building: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext
    fitting: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext
    any_batch: Callable[[keras.Model], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext

    @property
    def replicas(self) -> int:
        return len(self.devices)


@contextlib.contextmanager
def _without_distribution(model: keras.Model) -> Iterator[None]:
    """No Keras distribution inside (JAX); the one in force is restored on exit."""
    current = keras.distribution.distribution()
    keras.distribution.set_distribution(None)
    try:
        yield
    finally:
        keras.distribution.set_distribution(current)


@contextlib.contextmanager
def _without_strategy(model: keras.Model) -> Iterator[None]:
    """`model` predicts outside its TensorFlow strategy inside (its predict function is rebuilt
    on entry and exit); a workaround through Keras's private `_distribute_strategy`, which
    `Model.distribute_strategy` falls back from to the current (default) strategy."""
    strategy = model._distribute_strategy
    model._distribute_strategy, model.predict_function = None, None
    try:
        yield
    finally:
        model._distribute_strategy, model.predict_function = strategy, None


def local_devices() -> list[str]:
    """The devices data-parallel training uses on this host: the accelerators, else the CPUs."""
    backend = keras.backend.backend()
    if backend == "jax":
        return keras.distribution.list_devices()
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_logical_devices("GPU")
        return [d.name for d in gpus or tf.config.list_logical_devices("CPU")]
    raise DetsegError(
        f"train.distribution: data_parallel runs under the jax and tensorflow backends, not {backend!r}"
    )


def placement(distribution: str, batch_size: int) -> Placement:
    """The placement `train.distribution` asks for, logged; a one-line DetsegError when the
    backend cannot distribute or `batch_size` (the global batch) does not divide by the devices."""
    if distribution == "none":
        return Placement(("default",))
    devices = local_devices()
    if batch_size % len(devices):
        raise DetsegError(
            f"train.batch_size: {batch_size} does not divide by the {len(devices)} local devices "
            f"({', '.join(devices)}) of train.distribution: data_parallel"
        )
    log.info(
        "data parallel over %d devices (%s): %d images per device, global batch %d",
        len(devices),
        ", ".join(devices),
        batch_size // len(devices),
        batch_size,
    )
    if keras.backend.backend() == "jax":
        parallel = keras.distribution.DataParallel(devices=devices)
        return Placement(tuple(devices), parallel.scope, parallel.scope, _without_distribution)
    import tensorflow as tf

    strategy = tf.distribute.MirroredStrategy(devices)
    return Placement(tuple(devices), strategy.scope, any_batch=_without_strategy)


def _replica_context() -> Any:
    """The TensorFlow replica context of a train step split over several replicas, else None."""
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    return context if context is not None and context.num_replicas_in_sync > 1 else None


def replicas_in_sync() -> int:
    """How many replicas share the current train step: >1 only inside a TensorFlow strategy
    (one device, and JAX's SPMD step, see the whole batch as one)."""
    context = _replica_context()
    return 1 if context is None else context.num_replicas_in_sync


def cross_replica_sum(value: Any) -> Any:
    """`value` (a tensor, or a structure of tensors) summed over the replicas of a TensorFlow
    strategy; `value` itself elsewhere.

    Differentiable: the gradient of the sum reaching each replica is the sum of the replicas'
    gradients. So a loss computed from summed statistics (counts, or the sums of a Dice) is the
    whole batch's on every replica, and each replica returns its share, `/ replicas_in_sync()`.
    """
    context = _replica_context()
    if context is None:
        return value
    import tensorflow as tf

    return context.all_reduce(tf.distribute.ReduceOp.SUM, value)
