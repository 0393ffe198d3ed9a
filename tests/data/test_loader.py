"""The batch loader: exact evaluation batches, padded targets, reproducible epochs, threads, mosaic, masks."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest

from detseg.config import AugmentConfig, ShapesConfig
from detseg.data import (
    IGNORE_INDEX,
    PAD_LABEL,
    Dataset,
    DetectionLoader,
    Sample,
    SemanticMaskEncoder,
    build_augment,
    letterbox,
    letterbox_boxes,
    load_shapes,
    read_image,
    unletterbox_boxes,
)
from detseg.data.masks import read_mask
from detseg.errors import DetsegError

from .conftest import write_image
from .helpers import keras_epochs


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Dataset:
    """Five images of different sizes and aspect ratios with 0-3 boxes each."""
    root = tmp_path_factory.mktemp("tiny")
    sizes = [(64, 48), (40, 80), (50, 50), (96, 32), (30, 60)]
    boxes = [
        [[2, 3, 30, 40], [40, 10, 60, 20]],
        [[5, 5, 35, 70]],
        [],
        [[0, 0, 96, 32], [10, 4, 20, 30], [50, 1, 90, 31]],
        [[1, 1, 29, 59]],
    ]
    samples = []
    for i, ((w, h), b) in enumerate(zip(sizes, boxes, strict=True)):
        path = write_image(root / f"{i}.png", w, h, seed=i)
        samples.append(
            Sample(
                path,
                w,
                h,
                np.array(b, np.float32).reshape(-1, 4),
                np.arange(len(b)) % 2,
                image_id=i,
            )
        )
    return Dataset(samples, ["a", "b"])


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Dataset:
    cfg = ShapesConfig(
        num_train=12, num_val=2, image_size=96, min_size=12, max_size=40, max_objects=5, seed=5
    )
    return load_shapes(cfg, "train", tmp_path_factory.mktemp("shapes"))


@pytest.mark.jax
def test_evaluation_batches_are_the_letterboxed_images_and_boxes(tiny):
    loader = DetectionLoader(tiny, 64, 2)
    assert len(loader) == 3  # 5 samples in batches of 2: 2 + 2 + 1
    for i in range(len(loader)):
        images, targets = loader[i]
        samples, params = loader.batch_samples(i), loader.batch_params(i)
        # uint8 pixels (a quarter of float32's bytes): the letterboxed image itself, where
        # the batch used to be these pixels / 255 in float32; models now scale them inside.
        assert images.dtype == np.uint8 and images.shape == (len(samples), 64, 64, 3)
        for row, (sample, p) in enumerate(zip(samples, params, strict=True)):
            expected, _ = letterbox(read_image(sample.image_path), 64)
            np.testing.assert_array_equal(images[row], expected)
            n = sample.num_boxes
            np.testing.assert_allclose(
                targets["boxes"][row, :n], letterbox_boxes(sample.boxes, p), atol=1e-4
            )
            np.testing.assert_allclose(
                unletterbox_boxes(targets["boxes"][row, :n], p), sample.boxes, atol=1e-3
            )
            np.testing.assert_array_equal(targets["labels"][row, :n], sample.labels)
            assert (targets["labels"][row, n:] == PAD_LABEL).all()
    assert loader[0][1]["boxes"].shape == (2, 3, 4)  # padded to the most boxes of one image, 3


def test_the_encoder_is_called_once_per_batch_with_letterboxed_lists(tiny):
    calls = []

    def encoder(boxes, labels):
        calls.append((boxes, labels))
        return {"count": np.array([len(b) for b in boxes])}

    loader = DetectionLoader(tiny, 64, 4, encoder=encoder)
    _, targets = loader[0]
    assert len(calls) == 1 and targets["count"].tolist() == [2, 1, 0, 3]
    boxes, labels = calls[0]
    assert all(b.dtype == np.float32 and b.shape[1:] == (4,) for b in boxes)
    assert all(lab.dtype == np.int32 for lab in labels)


def _epoch(loader: DetectionLoader) -> list:
    return [loader[i] for i in range(len(loader))]


def _same(a: list, b: list) -> bool:
    return all(
        np.array_equal(x[0], y[0]) and all(np.array_equal(x[1][k], y[1][k]) for k in x[1])
        for x, y in zip(a, b, strict=True)
    )


def test_a_seed_gives_identical_epochs_and_each_epoch_a_new_order(shapes):
    augment = build_augment(AugmentConfig(rotate=10, color_p=1.0))

    def make() -> DetectionLoader:
        return DetectionLoader(shapes, 64, 4, augment=augment, shuffle=True, seed=7, mosaic_p=0.5)

    first, second = make(), make()
    epoch0 = _epoch(first)
    assert _same(epoch0, _epoch(second))
    first.on_epoch_end()
    second.on_epoch_end()
    epoch1 = _epoch(first)
    assert _same(epoch1, _epoch(second))
    assert not _same(epoch0, epoch1)
    order0 = [s.image_id for s in make().batch_samples(0)]
    assert order0 != [s.image_id for s in first.batch_samples(0)]  # epoch 1 is reshuffled
    assert sorted(s.image_id for i in range(len(first)) for s in first.batch_samples(i)) == sorted(
        s.image_id for s in shapes.samples
    )


@pytest.mark.jax
def test_drop_remainder_gives_batches_that_split_evenly(tiny):
    loader = DetectionLoader(tiny, 32, 4, shuffle=True, seed=1)
    assert [len(loader.batch_samples(i)) for i in range(len(loader))] == [4, 1]
    loader.drop_remainder(2)  # 5 images on 2 devices: 4 usable, one batch of 4 (2 per device)
    assert len(loader) == 1 and len(loader.batch_samples(0)) == 4
    loader = DetectionLoader(tiny, 32, 2, shuffle=True, seed=1)
    loader.drop_remainder(2)  # batches of 2: 2, 2 and the fifth image left out
    assert [len(loader.batch_samples(i)) for i in range(len(loader))] == [2, 2]
    with pytest.raises(ValueError, match="does not divide"):
        loader.drop_remainder(3)
    with pytest.raises(DetsegError, match="5 training items cannot be split over 6 devices"):
        DetectionLoader(tiny, 32, 6).drop_remainder(6)


def test_parallel_batches_equal_sequential_ones(shapes):
    augment = build_augment(AugmentConfig(rotate=10, crop_p=0.5, color_p=1.0))
    loader = DetectionLoader(
        shapes, 64, 2, augment=augment, shuffle=True, seed=3, mosaic_p=0.5, workers=2
    )
    sequential = _epoch(loader)
    with ThreadPoolExecutor(4) as pool:  # what keras' thread workers do: several batches at once
        parallel = list(pool.map(loader.__getitem__, range(len(loader))))
    assert _same(sequential, parallel)


def test_mosaic_batches_have_valid_boxes(shapes):
    loader = DetectionLoader(shapes, 96, 4, mosaic_p=1.0, shuffle=True, seed=1)
    total = 0
    for i in range(len(loader)):
        _, targets = loader[i]
        valid = targets["labels"] != PAD_LABEL
        boxes = targets["boxes"][valid]
        total += len(boxes)
        assert boxes.min(initial=0) >= 0 and boxes.max(initial=0) <= 96
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        assert set(targets["labels"][valid].tolist()) <= {0, 1, 2}
    assert total > 0
    assert loader[0][1]["boxes"].shape[1] == 4 * max(s.num_boxes for s in shapes.samples)


def test_semantic_mask_targets_are_letterboxed_class_maps(shapes):
    loader = DetectionLoader(shapes, 128, 3, encoder=SemanticMaskEncoder())
    _, masks = loader[0]
    assert masks.shape == (3, 128, 128) and masks.dtype == np.int32
    for row, sample in enumerate(loader.batch_samples(0)):
        raw = read_mask(sample.semantic_mask_path)  # shapes: 0 background, label + 1
        expected, _ = letterbox(raw, 128, IGNORE_INDEX, cv2.INTER_NEAREST)
        np.testing.assert_array_equal(masks[row], expected)
    augmented = DetectionLoader(
        shapes,
        128,
        3,
        encoder=SemanticMaskEncoder(),
        augment=build_augment(AugmentConfig(rotate=20), "segmentation"),
    )
    assert set(np.unique(augmented[0][1]).tolist()) <= {0, 1, 2, 3, IGNORE_INDEX}


def test_bad_arguments_are_rejected(tiny):
    with pytest.raises(ValueError, match="semantic-mask encoder needs"):
        DetectionLoader(tiny, 64, 2, encoder=SemanticMaskEncoder())
    with pytest.raises(ValueError, match="mosaic_p"):
        DetectionLoader(tiny, 64, 2, mosaic_p=2.0)
    with pytest.raises(IndexError):
        DetectionLoader(tiny, 64, 2)[3]


@pytest.mark.parametrize("processes", [False, True], ids=["threads", "processes"])
def test_keras_workers_give_the_same_epochs(shapes, processes):
    def epochs(loader: DetectionLoader) -> list:  # the path model.fit takes
        return [batch for epoch in keras_epochs(loader) for batch in epoch]

    augment = build_augment(AugmentConfig(rotate=10))
    options = {"augment": augment, "shuffle": True, "seed": 2, "mosaic_p": 0.5}
    sequential = epochs(DetectionLoader(shapes, 64, 4, **options))
    parallel = epochs(DetectionLoader(shapes, 64, 4, workers=2, use_multiprocessing=processes, **options))
    assert len(sequential) == 2 * 3 and _same(sequential, parallel)
