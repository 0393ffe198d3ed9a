"""`python -m detseg` runs the command line."""

import sys

from detseg.cli import main

sys.exit(main())
