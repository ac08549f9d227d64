"""Entry point of ``python -m gemel_engine``."""

import sys

from gemel_engine.cli import main

sys.exit(main())
