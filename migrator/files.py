"""Files replaced whole and durably: what a crash must leave either as it was or as written."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Union


def atomic_write(path: Path, data: Union[str, bytes]) -> None:
    """Temp file beside the target (with the target's mode and owner when it exists, else 0600), fsync, rename,
    fsync the directory."""
    previous = path.stat() if path.exists() else None
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode() if isinstance(data, str) else data)
            handle.flush()
            if previous is not None:
                os.fchmod(handle.fileno(), previous.st_mode & 0o7777)
                try:
                    os.fchown(handle.fileno(), previous.st_uid, previous.st_gid)
                except PermissionError:
                    pass
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
