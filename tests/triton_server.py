"""A real ``tritonserver`` (2.51, from nvidia-pytriton) for the tests and scripts/bench_triton.py.

nvidia-pytriton ships the binary, its libraries and the python backend only; it is
installed with ``--no-deps`` (its Python package pins numpy < 2, the binary needs no
numpy). Recipe (docs/serving.md): the backends folder is copied to a scratch folder with
the python-backend stub of the running Python put into it; ``LD_LIBRARY_PATH`` names the
bundled libraries and libpython; the server binds 127.0.0.1 on free ports, no metrics.

The stub of Triton 2.51 is built against numpy 1 (under numpy 2 it garbles BYTES inputs
and crashes), so the models run in an environment of their own (``EXECUTION_ENV_PATH``):
a venv with numpy 1 and the other serve-side dependencies at the pins below, built once
per pin set under the temp folder (pip, like tests/test_serve_venv.py), plus a small venv
per use whose ``.pth`` file adds that venv's packages and this tree's ``gradcam_model``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from locking import locked

ROOT = Path(__file__).resolve().parent.parent
# the stub's environment: numpy 1 (the stub's ABI), the newest OpenCV that allows it, our ORT
STUB_ENV_PINS = ("numpy==1.26.4", "opencv-python-headless==4.11.0.86", "onnxruntime==1.31.1", "tqdm==4.70.1")


def pytriton_dir() -> Path | None:
    """``site-packages/pytriton`` of nvidia-pytriton, found without importing it (it needs gevent)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations)))
    return folder if (folder / "tritonserver" / "bin" / "tritonserver").exists() else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stub_environment(folder: Path) -> Path:
    """A venv at ``folder`` for the models: the pinned numpy-1 packages and this tree's gradcam_model."""
    digest = hashlib.sha256((sys.version + "\n".join(STUB_ENV_PINS)).encode()).hexdigest()[:12]
    deps = Path(tempfile.gettempdir()) / f"gradcam-triton-env-{digest}"
    with locked(Path(tempfile.gettempdir()) / f"gradcam-triton-env-{digest}.lock"):
        if not (deps / "ready").exists():
            shutil.rmtree(deps, ignore_errors=True)
            subprocess.run([sys._base_executable, "-m", "venv", str(deps)], check=True, timeout=300)
            env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
            done = subprocess.run(
                [str(deps / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
                + list(STUB_ENV_PINS),
                capture_output=True,
                text=True,
                timeout=1200,
                env=env,
            )
            if done.returncode != 0:
                raise RuntimeError(f"building the stub environment failed: {done.stderr[-2000:]}")
            (deps / "ready").write_text("ok\n")
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(folder)], check=True, timeout=300)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(folder), "platbase": str(folder)}))
    deps_site = sysconfig.get_path("purelib", vars={"base": str(deps), "platbase": str(deps)})
    (site / "gradcam_stub_env.pth").write_text(f"{deps_site}\n{ROOT}\n")
    return folder


@dataclass
class TritonServer:
    """A running tritonserver and what is needed to reach it and to check its shutdown."""

    process: subprocess.Popen
    http_port: int
    grpc_port: int
    log: Path
    shm_before: set

    @property
    def http(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def shm_regions() -> set:
    """Triton's shared-memory regions now in /dev/shm."""
    return {p.name for p in Path("/dev/shm").glob("triton*")}


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def start(repo: Path, workdir: Path, models: list[str], *, timeout: float = 120.0) -> TritonServer:
    """Start tritonserver on ``repo`` (127.0.0.1, free ports, no metrics); return once ``models`` are ready."""
    pytriton = pytriton_dir()
    if pytriton is None:
        raise RuntimeError("nvidia-pytriton is not installed (pip install --no-deps nvidia-pytriton==0.7.0)")
    backends = workdir / "backends"
    shutil.copytree(pytriton / "tritonserver" / "backends", backends, dirs_exist_ok=True)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    shutil.copy2(pytriton / "tritonserver" / "python_backend_stubs" / version / "triton_python_backend_stub",
                 backends / "python" / "triton_python_backend_stub")  # fmt: skip
    libs = pytriton.parent / "nvidia_pytriton.libs"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["LD_LIBRARY_PATH"] = f"{libs}:{sysconfig.get_config_var('LIBDIR')}"
    env["PATH"] = "/usr/local/bin:/usr/bin:/bin"  # the models' environment comes from EXECUTION_ENV_PATH
    http_port, grpc_port = _free_port(), _free_port()
    log = workdir / "tritonserver.log"
    argv = [
        str(pytriton / "tritonserver" / "bin" / "tritonserver"),
        f"--model-repository={repo}",
        f"--backend-directory={backends}",
        "--http-address=127.0.0.1",
        f"--http-port={http_port}",
        "--grpc-address=127.0.0.1",
        f"--grpc-port={grpc_port}",
        "--allow-metrics=false",
        "--exit-timeout-secs=10",
    ]
    before = shm_regions()
    with open(log, "wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=workdir)
    server = TritonServer(process, http_port, grpc_port, log, before)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"tritonserver exited with {process.returncode}:\n{server.log_text()[-4000:]}")
        if all(_get(f"http://{server.http}/v2/models/{m}/ready") == 200 for m in models):
            return server
        time.sleep(0.2)
    stop(server)
    raise RuntimeError(f"tritonserver not ready in {timeout} s:\n{server.log_text()[-4000:]}")


def stop(server: TritonServer, timeout: float = 30.0) -> int:
    """SIGTERM, wait; kill what is left after ``timeout`` seconds. The server's exit code."""
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
    return server.process.returncode
