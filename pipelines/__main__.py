"""``python -m pipelines``: the ``chammi-build`` command."""

import sys

from chammi_cli.build import main

sys.exit(main())
