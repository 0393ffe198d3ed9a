"""detseg: object detection and segmentation on Keras 3."""

from detseg.errors import DetsegError

__version__ = "0.1.0"

__all__ = ["DetsegError", "__version__"]
