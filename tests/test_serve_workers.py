"""``gradcam serve --workers 2``: worker processes spawned by kserve reload the artifact, stay torch-free,
listen on 127.0.0.1 only, answer, and stop with the server on SIGTERM (gRPC is served by the parent)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from test_serve import ROOT, START_TIMEOUT, Server, _b64, _free_port, _jpeg, _listening, pytestmark  # noqa: F401

from gradcam_model import export_onnx


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_two_workers(resnet18_layer4, tmp_path):
    artifact = export_onnx(resnet18_layer4, tmp_path / "top1.onnx")
    port, grpc_port, log = _free_port(), _free_port(), tmp_path / "server.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONPROFILEIMPORTTIME": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    argv = [sys.executable, "-m", "gradcam_model", "serve", str(artifact), "--port", str(port), "--workers", "2"]
    argv += ["--grpc-port", str(grpc_port)]
    with open(log, "wb") as sink:
        process = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    server = Server(process, port, log, artifact)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while log.read_text().count("Application startup complete") < 2:  # both workers up
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.25)
        answers = [
            server.request("/v1/models/top1:predict", {"instances": [{"b64": _b64(_jpeg(i))}]}) for i in range(6)
        ]
        assert all(status == 200 and len(a["predictions"]) == 1 for status, a in answers)
        workers = [c for c in _children(process.pid) if "spawn_main" in Path(f"/proc/{c}/cmdline").read_text()]
        assert len(workers) == 2
        for pid in (process.pid, *workers):
            assert set(_listening(pid)) <= {f"127.0.0.1:{port}", f"::ffff:127.0.0.1:{grpc_port}"}
            assert "libtorch" not in Path(f"/proc/{pid}/maps").read_text()
        imported = [line.rsplit("|", 1)[-1].strip() for line in log.read_text().splitlines() if "|" in line]
        assert imported.count("onnxruntime") == 3  # the parent and both workers, none of them torch
        assert not [m for m in imported if m == "torch" or m.startswith("torch.")]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
