"""Atomic file and folder writes: write under a temp name beside the target, then rename over it.
Temp files and folders get the permissions the user's umask gives new ones (mkstemp / mkdtemp
make them private, which a shared model folder on a cluster cannot read)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success it replaces ``path``, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; give the file the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_json(path: Path | str, data) -> None:
    """Write ``data`` as indented, key-sorted JSON, atomically."""
    import json

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def temp_dir_beside(path: Path | str, prefix: str) -> Path:
    """A new empty folder in ``path``'s parent with the usual permissions (mkdtemp makes 0700)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=path.parent))
    os.chmod(tmp, 0o777 & ~current_umask())
    return tmp


def usual_permissions(folder: Path | str) -> None:
    """Give everything under ``folder`` the permissions the umask gives new files and folders
    (libraries that write through temp files, save_pretrained's among them, leave 0600)."""
    umask = current_umask()
    for path in Path(folder).rglob("*"):
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)
