"""The main job: tune sparse attention chains with Ray Tune (same as ``sah tune``).

With no argument it runs ``configs/default.yaml`` on the default recording (made on first
use) and writes ``results/default/``. See ``--help`` for the flags.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sah.cli.tune import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
