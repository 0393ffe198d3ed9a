"""detseg.distribute: the placement `train.distribution` asks for, and losses that stay those of
the whole batch when a TensorFlow strategy splits it over replicas."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import keras
import pytest

import detseg.distribute
from detseg.distribute import cross_replica_sum, placement, replicas_in_sync
from detseg.errors import DetsegError
from tests.conftest import REPO_ROOT


@pytest.mark.jax
def test_none_trains_on_one_device_and_outside_a_strategy_counts_are_local():
    place = placement("none", 7)
    assert place.replicas == 1
    with place.building(), place.fitting(), place.any_batch(keras.Model()):
        assert keras.distribution.distribution() is None
    assert replicas_in_sync() == 1
    assert float(cross_replica_sum(keras.ops.convert_to_tensor(3.0))) == 3.0


@pytest.mark.jax
def test_a_global_batch_that_does_not_split_over_the_devices_is_one_line_error(monkeypatch):
    monkeypatch.setattr(detseg.distribute, "local_devices", lambda: ["cpu:0", "cpu:1", "cpu:2", "cpu:3"])
    with pytest.raises(DetsegError) as err:
        placement("data_parallel", 6)
    assert str(err.value) == (
        "train.batch_size: 6 does not divide by the 4 local devices (cpu:0, cpu:1, cpu:2, cpu:3) "
        "of train.distribution: data_parallel"
    )


@pytest.mark.jax
def test_other_backends_cannot_distribute(monkeypatch):
    monkeypatch.setattr(keras.backend, "backend", lambda: "torch")
    with pytest.raises(DetsegError, match="^train.distribution: data_parallel runs under the jax and tensorflow backends, not 'torch'$"):
        placement("data_parallel", 8)


# Two logical CPUs (set before TensorFlow starts), a batch of 4 images split 2 + 2. Each loss
# is computed twice: on the whole batch (one device), and as the two replicas' losses of a
# MirroredStrategy, summed as Keras sums the replicas' gradients; the gradients are compared too.
SPLIT_LOSSES = """
import json
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from detseg.heads import YoloDetector
from detseg.heads.classifier import OUTPUT_LAYER, ImageClassifier
from detseg.heads.unet import segmentation_loss_terms
from tests.heads.yolo_helpers import ANCHORS_64, tiny_backbone

strategy = tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")])
rng = np.random.default_rng(0)

def split(tree):
    '''Replica r gets images 2r, 2r + 1 of every array of `tree`.'''
    return strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.nest.map_structure(lambda a: a[2 * ctx.replica_id_in_sync_group :][:2], tree)
    )

def whole_and_split(step, *args):
    '''step(*args) -> (loss, grads) on the whole batch, and summed over the replicas of a split batch.'''
    loss, grads = tf.function(step)(*args)
    parts = strategy.run(tf.function(step), args=tuple(split(a) for a in args))
    summed = tf.nest.map_structure(lambda v: strategy.reduce("SUM", v, axis=None), parts)
    flat = lambda gs: np.concatenate([np.ravel(g) for g in gs]).tolist()
    return [float(loss), float(summed[0]), flat(grads), flat(summed[1])]

with strategy.scope():
    keras.utils.set_random_seed(0)
    model = YoloDetector(tiny_backbone(64), 3, ANCHORS_64, width=0.125)
boxes = [
    np.array([[4, 4, 30, 30], [34, 6, 60, 40], [10, 40, 26, 60]], np.float32),
    np.zeros((0, 4), np.float32),
    np.array([[20, 20, 44, 44]], np.float32),
    np.zeros((0, 4), np.float32),
]
labels = [np.array([0, 1, 2]), np.zeros(0, np.int64), np.array([1]), np.zeros(0, np.int64)]
targets = {k: tf.constant(v) for k, v in model.make_target_encoder()(boxes, labels).items()}
images = tf.constant(rng.uniform(size=(4, 64, 64, 3)), tf.float32)

def yolo_step(x, y):
    with tf.GradientTape() as tape:  # inference-mode BatchNormalization: the same function of each image
        loss = model.compute_loss(y=y, y_pred=model(x, training=False))
    return loss, tape.gradient(loss, model.trainable_weights[-2:])

out = {"yolo": whole_and_split(yolo_step, images, targets)}
model.box_loss_tracker.reset_state()
tf.function(yolo_step)(images, targets)
whole_logged = float(model.box_loss_tracker.result())
model.box_loss_tracker.reset_state()
strategy.run(tf.function(yolo_step), args=(split(images), split(targets)))
out["yolo_logged"] = [whole_logged, float(model.box_loss_tracker.result())]
model.objectness_target = "iou"  # the IoU-aware objectness keeps the per-image sums
out["yolo_iou"] = whole_and_split(yolo_step, images, targets)

# A classifier's weighted mean: weights 1 + 3 in the first half, 0.5 + 0 in the second.
with strategy.scope():
    inputs = keras.Input((5,))
    classifier = ImageClassifier(inputs, keras.layers.Dense(3, activation="softmax", name=OUTPUT_LAYER)(inputs))

def classifier_step(x, y, w):
    with tf.GradientTape() as tape:
        loss = classifier.compute_loss(y=y, y_pred=classifier(x), sample_weight=w)
    return loss, tape.gradient(loss, classifier.trainable_weights)

out["classifier"] = whole_and_split(
    classifier_step, tf.constant(rng.normal(size=(4, 5)), tf.float32), tf.constant([0, 2, 1, 1]),
    tf.constant([1.0, 3.0, 0.5, 0.0]),
)

logits = tf.constant(rng.normal(size=(4, 2, 2, 3)), tf.float32)
# U-Net: 2 + 4 labelled pixels (255: unlabelled) in the first half, 1 + 3 in the second.
seg = np.array([
    [[0, 1], [255, 255]],
    [[2, 1], [2, 0]],
    [[2, 255], [255, 255]],
    [[0, 0], [1, 255]],
], np.int32)
seg = tf.constant(seg)

def unet_step(term, z, y):
    with tf.GradientTape() as tape:
        tape.watch(z)
        loss = segmentation_loss_terms(y, z, ignore_index=255, smooth=1.0)[term]
    return loss, [tape.gradient(loss, z)]

for term, name in ((0, "ce"), (1, "dice")):
    whole, grads = tf.function(lambda z, y: unet_step(term, z, y))(logits, seg)
    parts = strategy.run(tf.function(lambda z, y: unet_step(term, z, y)), args=(split(logits), split(seg)))
    shares = strategy.experimental_local_results(parts)
    out[name] = [float(whole), sum(float(s[0]) for s in shares),
                 np.ravel(grads[0]).tolist(), np.concatenate([np.ravel(s[1][0]) for s in shares]).tolist()]
print("SPLIT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def split_losses() -> dict:
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "PYTHONPATH": str(REPO_ROOT)}
    res = subprocess.run(
        [sys.executable, "-c", SPLIT_LOSSES], capture_output=True, text=True, timeout=300, env=env, cwd=REPO_ROOT
    )
    assert res.returncode == 0, res.stderr[-3000:]
    line = next(x for x in res.stdout.splitlines() if x.startswith("SPLIT "))
    return json.loads(line.removeprefix("SPLIT "))


def test_yolo_loss_of_a_split_batch_is_the_whole_batch_loss(split_losses):
    # Positives split unevenly: replica 0 gets images 0, 1 (3 objects), replica 1 images 2, 3
    # (1 object). With per-image loss sums a, b, c, d (b, d: objectness only), the whole batch's
    # loss is (a + b + c + d) / 4. Each replica divides its sum by the batch's 4 images (counted
    # across replicas): (a + b) / 4 + (c + d) / 4, the same. A per-replica mean, which Keras
    # would sum without rescaling a model's own compute_loss, gives (a + b) / 2 + (c + d) / 2:
    # twice the loss and twice the gradient. A per-replica normalisation by positives would give
    # (a + b) / 3 + (c + d) / 1 instead of (a + b + c + d) / 4: wrong unless (a + b) = 3 (c + d).
    for key in ("yolo", "yolo_iou"):  # objectness_target one, iou
        whole, summed, whole_grad, summed_grad = split_losses[key]
        assert summed == pytest.approx(whole, rel=1e-5)
        assert summed_grad == pytest.approx(whole_grad, rel=1e-4, abs=1e-6)
    # the logged box loss is the batch's too (each replica logs its mean per image, weighted by its images)
    logged_whole, logged_split = split_losses["yolo_logged"]
    assert logged_split == pytest.approx(logged_whole, rel=1e-5)


def test_unet_terms_of_a_split_batch_are_the_whole_batch_terms(split_losses):
    # Labelled pixels 2 + 4 | 1 + 3: the CE is the sum of -log p over the 10 labelled pixels / 10.
    # Per replica, s0 / 6 + s1 / 4 would differ; each replica's share s_r / 10 adds up to it.
    # The Dice is not a sum over images at all: its per-class sums are added over the replicas
    # first, then every replica has the batch's Dice, and returns half of it.
    for term in ("ce", "dice"):
        whole, summed, whole_grad, split_grad = split_losses[term]
        assert summed == pytest.approx(whole, rel=1e-5), term
        assert split_grad == pytest.approx(whole_grad, rel=1e-4, abs=1e-7), term


def test_classifier_weighted_mean_of_a_split_batch_is_the_whole_batch_mean(split_losses):
    # Image weights 1 + 3 | 0.5 + 0 and per-image losses l0..l3: the batch's weighted mean is
    # (l0 + 3 l1 + 0.5 l2) / 4.5; per replica, (l0 + 3 l1) / 4 + 0.5 l2 / 0.5 would differ.
    whole, summed, whole_grad, summed_grad = split_losses["classifier"]
    assert summed == pytest.approx(whole, rel=1e-5)
    assert summed_grad == pytest.approx(whole_grad, rel=1e-4, abs=1e-6)
