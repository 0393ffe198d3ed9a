"""Evaluate a model, or score a COCO results file: python tools/evaluate.py --gt GT.json --dt DT.json"""

import sys

from detseg.cli import main

sys.exit(main(["evaluate", *sys.argv[1:]]))
