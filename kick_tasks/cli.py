"""Deprecated: moved to :mod:`kick_analysis.cli` (``kick`` / ``python -m kick_analysis.cli``).

``python -m kick_tasks.cli ...`` still runs the ``kick`` command for one release.
"""

import sys

from kick_tasks._moved import moved

_cli = moved("kick_tasks.cli", "kick_analysis.cli", alias=__name__ != "__main__")

if __name__ == "__main__":
    sys.exit(_cli.main())
