"""Where things live: the shipped data (constitutions/, templates/) and rlaif's cache root.

In a source checkout they sit at the repository root; in an installed wheel
they are copied to rlaif/_data/ (see pyproject's force-include).
"""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    """The folder of shipped `constitutions` or `templates`."""
    for candidate in (_PACKAGE / "_data" / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"rlaif's {name}/ folder is missing from the installation; reinstall rlaif.")


def cache_root() -> Path:
    """Where rlaif keeps its caches (raw results, the converted default model): $RLAIF_CACHE_DIR or ~/.cache/rlaif."""
    return Path(os.environ.get("RLAIF_CACHE_DIR") or Path.home() / ".cache" / "rlaif").expanduser()
