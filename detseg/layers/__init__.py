"""The classic CNN layers: AlexNet's LRN, LeNet-5's subsampling and RBF output,
depthwise max pooling, inception modules, residual units, SE blocks, separable blocks, and
RGB -> grayscale for networks designed on one channel.

Every layer is registered as "detseg>Name" for `.keras` loading.
"""

from detseg.layers.color import RGBToGrayscale
from detseg.layers.conv import activation_layer, batch_norm, conv_bn_act, scale_channels
from detseg.layers.inception import InceptionModule
from detseg.layers.lrn import LocalResponseNormalization
from detseg.layers.pooling import DepthwiseMaxPool2D, TrainableSubsampling2D
from detseg.layers.rbf import RBFOutput
from detseg.layers.residual import BottleneckUnit, ResidualUnit
from detseg.layers.se import SEBlock
from detseg.layers.separable import SeparableConvBlock

__all__ = [
    "BottleneckUnit",
    "DepthwiseMaxPool2D",
    "InceptionModule",
    "LocalResponseNormalization",
    "RBFOutput",
    "RGBToGrayscale",
    "ResidualUnit",
    "SEBlock",
    "SeparableConvBlock",
    "TrainableSubsampling2D",
    "activation_layer",
    "batch_norm",
    "conv_bn_act",
    "scale_channels",
]
