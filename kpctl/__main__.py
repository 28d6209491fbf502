"""`python -m kpctl`: the kpctl command."""

import sys

from kpctl.cli import main

sys.exit(main())
