"""`python -m embtune_utils` is the `embtune` command (see embtune_utils.cli)."""

import sys

from embtune_utils.cli import main

sys.exit(main())
