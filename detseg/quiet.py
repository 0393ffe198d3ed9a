"""Start the Keras backend without TensorFlow's native start-up chatter on stderr.

TensorFlow's C++ runtime logs (oneDNN notice, missing CUDA drivers) are written to file
descriptor 2 before any Python logging setting applies, so they are silenced at the OS level
while the backend imports and enumerates its devices.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null inside the block, restoring it afterwards."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def start_backend_quietly(tensorflow: bool = False) -> None:
    """Import Keras and initialise its devices with native start-up logs hidden.

    `tensorflow`: also import TensorFlow, when installed, under any backend. Jobs that use it
    beside another backend (training seeds it in `keras.utils.set_random_seed` and writes
    TensorBoard logs with it; exports convert through it) would otherwise print its start-up
    chatter in the middle of their output.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with native_stderr_silenced():
        import keras

        keras.distribution.list_devices()
        if tensorflow and importlib.util.find_spec("tensorflow") is not None:
            importlib.import_module("tensorflow")
