"""The Fashion-MNIST CNN of *Hands-On Machine Learning*'s CNN chapter, as a backbone.

conv 64@7x7 -> max pool 2 -> 2x conv 128@3x3 -> max pool 2 -> 2x conv 256@3x3 -> max pool 2,
ReLU and "same" padding throughout; on a 28x28 input the maps are 14, 7 and 3 px. Its dense
top (128 -> dropout -> 64 -> dropout -> classes) is `top: paper` in `detseg.heads.classifier`.
"""

import keras

from detseg.backbones.pyramid import channel_scaler, image_input, make_backbone


def fashion_cnn(
    input_shape=(None, None, 1),
    *,
    width: float = 1.0,
    weights: "str | None" = None,
    name: str = "fashion_cnn",
) -> keras.Model:
    """The chapter's convolutional part with levels P1 (stride 2), P2 (4) and P3 (8)."""
    c = channel_scaler(width, name)
    inputs, pixels = image_input(input_shape)
    # === Layers ===
    x = keras.layers.Conv2D(c(64), 7, padding="same", activation="relu", name="conv1")(pixels)
    levels = {"P1": keras.layers.MaxPooling2D(2, name="pool1")(x)}
    x = levels["P1"]
    for block, filters in ((2, 128), (3, 256)):
        for i in (1, 2):
            x = keras.layers.Conv2D(c(filters), 3, padding="same", activation="relu", name=f"conv{block}_{i}")(x)
        x = keras.layers.MaxPooling2D(2, name=f"pool{block}")(x)
        levels[f"P{block}"] = x
    # === Functional Model ===
    return make_backbone(inputs, levels, name=name, weights=weights)
