"""`python -m embtune_utils` runs the course runner (see embtune_utils.course)."""

import sys

from embtune_utils.course import main

sys.exit(main())
