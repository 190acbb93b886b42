"""``python -m implicit_snn``: the same as the ``implicit-snn`` command."""

import sys

from .app.cli import main

sys.exit(main())
