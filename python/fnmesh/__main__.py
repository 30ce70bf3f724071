"""``python -m fnmesh``: the ``fnmesh`` command line (see :mod:`fnmesh.cli`)."""

from __future__ import annotations

import sys

from fnmesh.cli import main

if __name__ == "__main__":
    sys.exit(main())
