"""The temp file of an atomic write: created beside its target (so the final rename stays on one filesystem) with
the permissions an ordinary new file gets (mkstemp's own 0600 would leave videos and models unreadable to others)."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
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


@contextmanager
def atomic_path(path: str | os.PathLike, keep_suffix: bool = False):
    """Yield the name of a temp file beside `path` for a writer that opens files by name; on success it is given
    ordinary permissions again (some writers, safetensors among them, re-create the file as 0600) and renamed onto
    `path`, on any error removed. `keep_suffix`: the temp name ends in `path`'s suffix (for writers that pick the
    format by it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    name, suffix = (path.with_name(path.stem), path.suffix or ".tmp") if keep_suffix else (path, ".tmp")
    fd, tmp = temp_beside(name, suffix)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
