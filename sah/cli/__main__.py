"""``python -m sah.cli ...``: the same as the ``sah`` console script."""

import sys

from sah.cli import main

sys.exit(main())
