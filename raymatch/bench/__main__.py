"""``python -m raymatch.bench``."""

import sys

from . import main

sys.exit(main())
