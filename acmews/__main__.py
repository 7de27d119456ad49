"""``python -m acmews``: the ``acmews`` command (see acmews.cli)."""

import sys

from acmews.cli import main

sys.exit(main())
