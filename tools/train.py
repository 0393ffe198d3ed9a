"""Train a model from a YAML config: python tools/train.py CONFIG [--set key=value]"""

import sys

from detseg.cli import main

sys.exit(main(["train", *sys.argv[1:]]))
