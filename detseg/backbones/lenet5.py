"""LeNet-5 (LeCun et al. 1998): C1 conv 6@5x5, S2 subsampling, C3 conv 16@5x5, S4 subsampling.

C5 (120@5x5, a dense layer on the 5x5 maps), F6 (84) and the RBF output form the paper's
top, built by `detseg.heads.classifier`. C3 here connects to all six S2 maps (2,416
parameters), not through the paper's sparse connection table (1,516).
"""

import keras

from detseg.backbones.pyramid import channel_scaler, image_input, make_backbone
from detseg.layers import TrainableSubsampling2D


def lenet5(
    input_shape=(None, None, 3),
    *,
    width: float = 1.0,
    weights: "str | None" = None,
    padding: str = "same",
    name: str = "lenet5",
) -> keras.Model:
    """LeNet-5's feature extractor with levels P1 (S2, 6 maps) and P2 (S4, 16 maps).

    `padding="same"` keeps the strides exact (2 and 4) for dense heads;
    `padding="valid"` is the paper's 32 -> 28 -> 14 -> 10 -> 5 on a 32x32 input.
    All units use tanh, the paper's squashing function.
    """
    c = channel_scaler(width, name)
    inputs, pixels = image_input(input_shape)
    # === Layers ===
    x = keras.layers.Conv2D(c(6), 5, padding=padding, activation="tanh", name="c1")(pixels)
    p1 = TrainableSubsampling2D(2, activation="tanh", name="s2")(x)
    x = keras.layers.Conv2D(c(16), 5, padding=padding, activation="tanh", name="c3")(p1)
    p2 = TrainableSubsampling2D(2, activation="tanh", name="s4")(x)
    # === Functional Model ===
    return make_backbone(inputs, {"P1": p1, "P2": p2}, name=name, weights=weights)
