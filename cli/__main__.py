"""``python -m spann3r.cli`` = the ``spann3r`` command."""

import sys

from .main import main

sys.exit(main())
