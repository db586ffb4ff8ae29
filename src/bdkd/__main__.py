"""``python -m bdkd`` runs the command line."""

import sys

from bdkd.cli import main

sys.exit(main())
