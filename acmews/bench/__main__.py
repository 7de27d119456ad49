"""``python -m acmews.bench``: the load generator's command line (also its worker processes)."""

import sys

from acmews.bench.cli import main

sys.exit(main())
