"""detseg: object detection and segmentation on Keras 3.

The public API is re-exported here by hand; importing detseg registers nothing and does not
import the Keras backend.
"""

from detseg.config import Config, dump_config, load_config
from detseg.errors import DetsegError

__version__ = "0.1.0"

__all__ = ["Config", "DetsegError", "__version__", "dump_config", "load_config"]
