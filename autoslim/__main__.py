"""``python -m autoslim``: the ``autoslim`` command."""

import sys

from autoslim.cli import main

sys.exit(main())
