"""``python -m polyfleet``."""

import sys

from polyfleet.cli import main

sys.exit(main())
