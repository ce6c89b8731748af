"""Write a file so that readers see the old one or the complete new one, never a part."""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from pathlib import Path

from ..errors import ExportError

__all__ = ["check_target", "write_bytes_atomic"]


def check_target(path: str | os.PathLike, *, overwrite: bool) -> Path:
    """Refuse a directory, or an existing file unless ``overwrite``; before any expensive work."""
    target = Path(path)
    if target.is_dir():
        raise ExportError(f"{target} is a directory; give a file path for the artifact")
    if target.exists() and not overwrite:
        raise ExportError(f"{target} already exists; pass overwrite=True (CLI: --overwrite) to replace it")
    return target


def write_bytes_atomic(path: str | os.PathLike, data: bytes, *, overwrite: bool) -> None:
    """Atomically write ``data`` to ``path``.

    The bytes go to an anonymous ``O_TMPFILE`` inode in the target directory, which
    gets a name only once complete (then renamed over ``path``): a process killed
    mid-write leaves nothing behind. Where ``O_TMPFILE`` is unavailable a named
    temporary file is used and removed on any error. Either way an existing file at
    ``path`` stays byte-identical unless the whole write succeeds.
    """
    target = check_target(path, overwrite=overwrite)
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot create folder {parent}: {exc.strerror or exc}") from exc
    tmp = parent / f".{target.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        if not _write_anonymous(parent, tmp, data):
            fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent)
            tmp = Path(name)
            try:
                _write_all(fd, data)
            finally:
                os.close(fd)
        os.replace(tmp, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise ExportError(f"cannot write {target}: {exc.strerror or exc}; any older file there is unchanged") from exc
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _write_anonymous(parent: Path, tmp: Path, data: bytes) -> bool:
    """Write through an unnamed O_TMPFILE inode, then name it ``tmp``; False where unsupported."""
    if not hasattr(os, "O_TMPFILE"):
        return False
    try:
        fd = os.open(parent, os.O_TMPFILE | os.O_WRONLY, 0o644)
    except OSError:
        return False  # filesystem without O_TMPFILE
    try:
        _write_all(fd, data)
        try:
            os.link(f"/proc/self/fd/{fd}", tmp, follow_symlinks=True)
        except OSError:
            return False  # some sandboxes refuse linkat on /proc fds (EXDEV); caller falls back
    finally:
        os.close(fd)
    return True


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
    os.fsync(fd)
