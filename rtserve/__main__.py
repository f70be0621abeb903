"""`python -m rtserve` = the `rtserve` command."""

import sys

from rtserve.cli import main

sys.exit(main())
