"""Write a file so that readers see the old one or the complete new one, never a part.

Used by both wings (artifacts, overlays, grids, CSV files); torch-free.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import uuid
from pathlib import Path

from .errors import ExportError, OutputExistsError

__all__ = ["check_target", "write_bytes_atomic", "remove_stale_temporaries"]

log = logging.getLogger(__name__)

_NEW_FILE_MODE = 0o666  # the kernel applies the umask: 0644 under umask 022, like any new file
_link_works = True  # linking an O_TMPFILE inode fails with EXDEV in some sandboxes; then stop trying


class _Terminated(BaseException):
    """SIGTERM arrived while a temporary file existed (raised by our handler, never escapes)."""


def check_target(path: str | os.PathLike, *, overwrite: bool) -> Path:
    """Refuse a directory, or an existing file unless ``overwrite``; before any expensive work."""
    target = Path(path)
    if target.is_dir():
        raise ExportError(f"{target} is a directory; give a file path for the artifact")
    if target.exists() and not overwrite:
        raise OutputExistsError(f"{target} already exists; pass {{overwrite}} to replace it")
    return target


def _temporary_name(target: Path) -> Path:
    """``.<name>.<pid>-<random>.tmp`` beside the target: the pid tells a later run whether it is stale."""
    return target.parent / f".{target.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(target: str | os.PathLike) -> list[Path]:
    """Remove temporaries of ``target`` left by writers that were killed (SIGKILL cannot clean up).

    A temporary ``.<name>.<pid>-<random>.tmp`` is stale when no process ``pid`` runs on
    this machine any more; temporaries of running writers are left alone. Returns the
    removed paths.
    """
    target = Path(target)
    removed = []
    try:
        candidates = list(target.parent.glob(f".{target.name}.*.tmp"))
    except OSError:
        return removed
    for tmp in candidates:
        tag = tmp.name[len(target.name) + 2 : -len(".tmp")]
        pid_text = tag.split("-", 1)[0]
        if not pid_text.isdigit() or int(pid_text) == os.getpid() or _pid_alive(int(pid_text)):
            continue
        with contextlib.suppress(OSError):
            tmp.unlink()
            removed.append(tmp)
            log.info("removed %s, left by a writer that was killed", tmp)
    return removed


@contextlib.contextmanager
def _sigterm_cleans_up():
    """While a temporary exists, turn SIGTERM into an exception (so it is removed), then die of SIGTERM.

    Only when SIGTERM still has its default action and we are on the main thread:
    a program with its own handler (the CLI, a server) keeps it, and its handler's
    exception unwinds through the cleanup below in the same way.
    """
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def handler(signum, frame):
        raise _Terminated

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    except _Terminated:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)  # the temporary is gone: end as the signal would have
        raise
    finally:
        if signal.getsignal(signal.SIGTERM) is handler:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def write_bytes_atomic(path: str | os.PathLike, data: bytes, *, overwrite: bool) -> None:
    """Atomically write ``data`` to ``path``, with the mode a new file gets under the umask.

    The bytes go to an anonymous ``O_TMPFILE`` inode in the target directory, which
    gets a name only once complete (then renamed over ``path``). Where that is
    unavailable a named temporary ``.<name>.<pid>-<random>.tmp`` is used; it is
    removed on any error, on SIGTERM and on Ctrl-C. SIGKILL cannot be caught: the
    next write to the same ``path`` removes temporaries whose process is gone. An
    existing file at ``path`` stays byte-identical unless the whole write succeeds.
    """
    target = check_target(path, overwrite=overwrite)
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot create folder {parent}: {exc.strerror or exc}") from exc
    remove_stale_temporaries(target)
    tmp = _temporary_name(target)
    with _sigterm_cleans_up():
        try:
            if not _write_anonymous(parent, tmp, data):
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), _NEW_FILE_MODE)
                try:
                    _write_all(fd, data)
                finally:
                    os.close(fd)
            os.replace(tmp, target)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise ExportError(
                f"cannot write {target}: {exc.strerror or exc}; any older file there is unchanged"
            ) from exc
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise


def _write_anonymous(parent: Path, tmp: Path, data: bytes) -> bool:
    """Write through an unnamed O_TMPFILE inode, then name it ``tmp``; False where unsupported."""
    global _link_works
    if not _link_works or not hasattr(os, "O_TMPFILE"):
        return False
    try:
        fd = os.open(parent, os.O_TMPFILE | os.O_WRONLY, _NEW_FILE_MODE)
    except OSError:
        return False  # filesystem without O_TMPFILE
    try:
        _write_all(fd, data)  # nameless until complete: a kill here leaves nothing behind
        try:
            os.link(f"/proc/self/fd/{fd}", tmp, follow_symlinks=True)
        except OSError:
            # some sandboxes refuse linkat on /proc fds (EXDEV): fall back, and stop trying in this process
            _link_works = False
            return False
    finally:
        os.close(fd)
    return True


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
    os.fsync(fd)
