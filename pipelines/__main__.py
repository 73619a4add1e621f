"""``python -m pipelines``: the ``chammi-build`` command."""

import sys

from pipelines.cli import main

sys.exit(main())
