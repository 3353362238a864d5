"""``python -m raymatch``: the ``raymatch`` command."""

import sys

from .cli import main

sys.exit(main())
