"""feature_maps: the chapter's line filters on an image, checked against a slow loop."""

import cv2
import keras
import numpy as np
import pytest

from detseg.backbones import get_backbone
from detseg.errors import DetsegError
from detseg.feature_maps import feature_maps, line_filters


def _slow_same_conv(image, filters):
    """Cross-correlation with zero 'same' padding, one output pixel at a time."""
    kh, kw, _, cout = filters.shape
    padded = np.pad(image, ((kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    out = np.zeros((*image.shape[:2], cout), dtype="float64")
    for r in range(image.shape[0]):
        for c in range(image.shape[1]):
            patch = padded[r : r + kh, c : c + kw, :]
            for k in range(cout):
                out[r, c, k] = np.sum(patch * filters[:, :, :, k])
    return out


def _vertical_line_image():
    image = np.zeros((24, 20, 3), dtype=np.uint8)
    image[:, 9] = 255  # a white vertical line in column 9
    return image


def test_line_filters_on_an_image_match_a_slow_convolution_and_save_a_png(tmp_path):
    image = _vertical_line_image()
    path = tmp_path / "line.png"
    cv2.imwrite(str(path), image)
    out_png = tmp_path / "maps.png"
    maps = feature_maps(line_filters(7, 3), path, out_png)
    np.testing.assert_allclose(maps, _slow_same_conv(image.astype(np.float64), line_filters(7, 3)), atol=1e-2)
    # Away from the borders the vertical filter sums 7 rows x 3 channels of the line's 255s
    # = 21 * 255, while the horizontal one crosses it once: 3 * 255.
    assert maps[12, 9, 0] == pytest.approx(21.0 * 255)
    assert maps[12, 9, 1] == pytest.approx(3.0 * 255)
    assert maps[:, :, 0].argmax() % maps.shape[1] == 9
    written = cv2.imread(str(out_png))
    assert written is not None and written.shape[0] > 50 and written.std() > 0


@pytest.mark.jax
def test_a_layer_gives_the_same_maps_as_its_filter_bank(tmp_path):
    image = _vertical_line_image()
    conv = keras.layers.Conv2D(2, 7, padding="same", use_bias=False)
    conv.build((None, None, None, 3))
    conv.set_weights([line_filters(7, 3)])
    from_layer = feature_maps(conv, image, tmp_path / "layer.png")
    np.testing.assert_allclose(from_layer, feature_maps(line_filters(7, 3), image), atol=1e-2)


def test_a_backbone_level_is_plotted(tmp_path):
    backbone = get_backbone("darknet_tiny", (None, None, 3), width=0.25)
    maps = feature_maps(backbone, _vertical_line_image()[:, :16], tmp_path / "p4.png", level="P4")
    assert maps.shape == (2, 1, 64)  # 24x16 input at stride 16, 256 * 0.25 channels
    with pytest.raises(DetsegError, match="valid: P3, P4, P5"):
        feature_maps(backbone, _vertical_line_image(), level="P7")


def test_bad_inputs_are_user_errors(tmp_path):
    with pytest.raises(DetsegError, match="cannot read"):
        feature_maps(line_filters(), tmp_path / "missing.jpg")
    with pytest.raises(DetsegError, match="cin = 1"):
        feature_maps(line_filters(7, 3), np.zeros((8, 8), dtype=np.uint8))
