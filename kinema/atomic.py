"""The temp file of an atomic write: created beside its target (so the final rename stays on one filesystem) with
the permissions an ordinary new file gets (mkstemp's own 0600 would leave videos and models unreadable to others)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temp_beside(path: str | os.PathLike, suffix: str = ".tmp") -> tuple[int, str]:
    """(fd, name) of a new hidden temp file in `path`'s folder, mode 0666 less the umask."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.fchmod(fd, 0o666 & ~_umask())
    return fd, tmp
