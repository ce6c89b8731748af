"""The Ray engine's cluster: a throwaway local one on loopback, or an existing one checked before connecting.

``ray`` is imported only when the engine runs (the ``[ray]`` extra).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator

from ..errors import GradCAMError, InputError

__all__ = ["CONNECT_TIMEOUT_S", "DEFAULT_OBJECT_STORE_MB", "import_ray", "local_cluster"]

log = logging.getLogger(__name__)

DEFAULT_OBJECT_STORE_MB = 512


def import_ray():
    """``ray`` and ``ray.data``, or one line naming the extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise GradCAMError(
            'the Ray engine needs ray[data], which this install lacks: pip install "gradcam_model[ray]"'
        ) from None
    return ray


@contextlib.contextmanager
def local_cluster(*, num_cpus: int | None = None, object_store_mb: int = DEFAULT_OBJECT_STORE_MB) -> Iterator[None]:
    """Start a single-node Ray cluster on loopback only, shut it down on the way out (errors included).

    Every Ray process is told to use 127.0.0.1 and no dashboard is started: a throwaway
    cluster has no business listening on the machine's external interface.
    """
    ray = import_ray()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # nothing leaves this machine
    started = time.perf_counter()
    with _signals_kept(default=False):  # our handler stays: a stopped start-up shuts the processes down
        ray.init(
            num_cpus=num_cpus,
            object_store_memory=int(object_store_mb) * 1024 * 1024,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            log_to_driver=False,
            configure_logging=False,
        )
    log.info("started a local Ray cluster in %.1f s", time.perf_counter() - started)
    try:
        yield
    finally:
        ray.shutdown()


CONNECT_TIMEOUT_S = 5.0  # a cluster that does not answer a TCP connection within this is unreachable


def _check_reachable(address: str) -> None:
    """One line, within seconds, when nothing listens at ``address`` (Ray itself retries for minutes)."""
    if address == "auto":
        return  # Ray finds the address itself, and fails at once when there is none
    host, _, port = address.removeprefix("ray://").rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit():
        raise InputError(f"--address {address!r}: expected 'auto', ray://HOST:PORT or HOST:PORT")
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        reason = "no answer" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc)).lower()
        raise GradCAMError(
            f"cannot reach the Ray cluster at {address} ({reason}); check --address (a Ray client: "
            "ray://HOST:10001, a cluster's head: HOST:6379, or auto on a cluster node)"
        ) from None


@contextlib.contextmanager
def _signals_kept(*, default: bool = True):
    """Keep SIGTERM ours around ``ray.init``: it stops the command at once and runs our clean-up.

    ``ray.init`` (ray 2.60, ``_private/worker.py``) first installs its own SIGTERM handler, a Python
    ``sys.exit(15)``, then connects; a connection that does not answer blocks in native code for
    tens of seconds, where no Python handler runs (the signal waited ~21 s here). So Ray's
    ``set_sigterm_handler`` is disabled for the call, and with ``default`` SIGTERM keeps the
    kernel's action while connecting to a cluster (the process ends at once; nothing is written
    yet). Afterwards the handler that was there (``gradcam``'s clean unwinding) comes back.
    """
    import ray._private.utils as ray_utils

    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main else None
    original = ray_utils.set_sigterm_handler
    ray_utils.set_sigterm_handler = lambda handler: None
    if main and default:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        yield
    finally:
        ray_utils.set_sigterm_handler = original
        if main:
            signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _cluster(address: str | None, num_cpus: int | None, object_store_mb: int) -> Iterator[None]:
    ray = import_ray()
    if ray.is_initialized():  # the caller's own session: use it, leave it running
        yield
    elif address:
        if not (address == "auto" or address.startswith("ray://") or ":" in address):
            raise InputError(f"--address {address!r}: expected 'auto', ray://HOST:PORT or HOST:PORT")
        _check_reachable(address)
        try:
            with _signals_kept():
                ray.init(address=address, log_to_driver=False, configure_logging=False)
        except (ConnectionError, RuntimeError, TimeoutError, ValueError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise GradCAMError(f"cannot connect to the Ray cluster at {address}: {first}") from None
        try:
            yield
        finally:
            ray.shutdown()  # disconnects; the cluster keeps running
    else:
        with local_cluster(num_cpus=num_cpus, object_store_mb=object_store_mb):
            yield
