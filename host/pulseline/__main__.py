"""python -m pulseline: the pulseline command."""

import sys

from .cli import main

sys.exit(main())
