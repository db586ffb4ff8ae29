"""``python -m bdkd`` runs the command line.

``python -m`` puts the working directory first on the import path; bdkd takes it off again,
so that ``python -m bdkd`` (and the processes ``--nproc`` starts that way) imports modules
exactly as the ``bdkd`` console script does: from ``PYTHONPATH`` and installed packages only,
never a file that happens to lie in the working directory (see :mod:`bdkd.plugins`).
"""

import os
import sys

if sys.path and sys.path[0] in ("", os.getcwd()):
    del sys.path[0]

from bdkd.cli import main  # noqa: E402  (after the import path is fixed)

sys.exit(main())
