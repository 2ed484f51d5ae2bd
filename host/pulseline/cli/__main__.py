"""python -m pulseline.cli: the pulseline command."""

import sys

from . import main

sys.exit(main())
