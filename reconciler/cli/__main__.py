"""`python -m reconciler.cli`: the same as the `reconcile` entry point."""

import sys

from reconciler.cli import main

sys.exit(main())
