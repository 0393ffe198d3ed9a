"""Run a model on a video, stream or webcam: python tools/infer_video.py MODEL --source SRC [--save out.mp4]"""

import sys

from detseg.cli import main

sys.exit(main(["predict", *sys.argv[1:]]))
