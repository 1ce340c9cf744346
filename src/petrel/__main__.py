"""``python -m petrel`` is the ``petrel`` command."""

import sys

from petrel.cli import main

sys.exit(main())
