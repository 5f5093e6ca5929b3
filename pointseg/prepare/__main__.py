"""``python -m pointseg.prepare <dataset> ...``: the same as ``pointseg-prepare``."""

import sys

from pointseg.prepare import main

main(sys.argv[1:])
