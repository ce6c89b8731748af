"""Helper of tests/test_ray.py, run inside a private network namespace: one local Ray cluster, every scenario.

Usage: ``python ray_cluster_run.py SPEC.json``. Writes ``SPEC``'s ``results`` JSON file.
The cluster is started with :func:`gradcam_model.runtime.ray_engine.local_cluster` (what
``gradcam explain --engine ray`` uses) and shut down in its ``finally``; the test runs this
script as PID 1 of its own PID namespace, so the kernel also ends every Ray process when
it exits, whatever happened.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from gradcam_model.cli import main
from gradcam_model.runtime.journal import SIGTERM_AFTER_ENV, partial_rows
from gradcam_model.runtime.ray_actor import CRASH_ONCE_ENV
from gradcam_model.runtime.ray_engine import explain_dataset, import_ray, local_cluster


def _listeners() -> list[str]:
    """Local addresses of listening TCP sockets, from ``ss`` (one per line, ADDRESS:PORT)."""
    done = subprocess.run(["ss", "-Hltn"], capture_output=True, text=True, timeout=20, check=True)
    return [line.split()[3] for line in done.stdout.splitlines() if line.strip()]


def _cli(argv: list[str]) -> dict:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return {"rc": rc, "stdout": out.getvalue(), "stderr": err.getvalue()}


def _summary(summary) -> dict:
    return {"paths": [str(p.path) for p in summary.predictions], "failures": len(summary.failures),
            "provider": summary.provider, "seconds": summary.seconds}  # fmt: skip


def _noise(artifact: str, inputs: list[str], work: Path) -> dict:
    """``gradcam explain --engine ray`` in a process of its own (its own cluster): stderr, default and -v."""
    one = sorted(str(p) for p in Path(inputs[0]).rglob("*.jpg"))[:1]
    found = {}
    for name, flags in (("default", []), ("verbose", ["-v"])):
        argv = [sys.executable, "-m", "gradcam_model", "explain", artifact, *one, "--out", str(work / f"noise-{name}"),
                "--engine", "ray", "--workers", "1", *flags]  # fmt: skip
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        found[name] = {"rc": done.returncode, "stderr": done.stderr}
    return found


def _sigterm_while_connecting(artifact: str, inputs: list[str], work: Path) -> dict:
    """A listener that accepts and never answers: ``ray.init`` waits in native code; SIGTERM must end it at once."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held = []
    threading.Thread(target=lambda: held.extend(iter(listener.accept, None)), daemon=True).start()
    address = f"127.0.0.1:{listener.getsockname()[1]}"
    argv = [sys.executable, "-m", "gradcam_model", "explain", artifact, *inputs, "--out", str(work / "hang"),
            "--engine", "ray", "--address", address]  # fmt: skip
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(12)  # past `import ray` and the reachability check: inside ray.init
    alive = process.poll() is None
    started = time.perf_counter()
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    return {"alive": alive, "rc": process.returncode, "exit_s": time.perf_counter() - started, "stderr": err,
            "out_exists": (work / "hang").exists()}  # fmt: skip


def run(spec: dict) -> dict:
    results: dict = {"started": time.time()}
    addresses = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, timeout=20, check=True)
    results["interfaces"] = sorted({line.split()[1] for line in addresses.stdout.splitlines()})
    marker = Path(spec["crash_marker"])
    marker.write_text("armed later")  # present: no actor crashes until the crash scenario removes it
    os.environ[CRASH_ONCE_ENV] = str(marker)  # before the cluster starts: the workers inherit it
    artifact, inputs, work = spec["artifact"], spec["inputs"], Path(spec["work"])
    common = {"batch_size": spec["batch_size"], "progress": False}
    with local_cluster(num_cpus=2, object_store_mb=200):
        results["listeners"] = _listeners()
        started = time.perf_counter()
        summary = explain_dataset(artifact, inputs, work / "ray", workers=2, save_maps=True, **common)
        results["equal_run"] = {**_summary(summary), "wall": time.perf_counter() - started}
        argv = ["explain", artifact, *inputs, "--out", str(work / "cli"), "--engine", "ray", "--workers", "2",
                "--batch-size", str(spec["batch_size"])]  # fmt: skip
        results["cli"] = _cli(argv)
        results["cli_again"] = _cli(argv)
        results["cli_overwrite"] = _cli([*argv, "--overwrite"])
        resumed = ["explain", artifact, *inputs, "--out", str(work / "resumed"), "--engine", "ray", "--workers", "2",
                   "--batch-size", "2"]  # fmt: skip
        os.environ[SIGTERM_AFTER_ENV] = "4"  # the driver stops itself after 4 rows, through the real signal path
        try:
            results["killed"] = _cli(resumed)
        finally:
            del os.environ[SIGTERM_AFTER_ENV]
        results["killed_rows"] = len(partial_rows(work / "resumed")[0])
        results["resumed"] = _cli([*resumed, "--resume"])
        marker.unlink()
        summary = explain_dataset(artifact, inputs, work / "crash", workers=2, batch_size=2, progress=False)
        results["crash"] = {**_summary(summary), "marker": marker.exists(), "killed_pid": marker.read_text()}
        ray = import_ray()
        files = sorted(str(p) for p in Path(inputs[0]).rglob("*") if p.is_file())
        dataset = ray.data.read_binary_files(files, include_paths=True)
        summary = explain_dataset(artifact, dataset, work / "dataset", workers=1, **common)
        results["dataset"] = _summary(summary)
        # a cropping artifact on odd pictures (tall, wide, tiny, grey, RGBA, 16-bit)
        summary = explain_dataset(spec["crop_artifact"], [spec["odd_pictures"]], work / "odd", workers=2,
                                  save_maps=True, **common)  # fmt: skip
        results["odd"] = _summary(summary)
        # a guided Grad-CAM artifact through the command line: its guided/ pictures
        guided = ["explain", spec["guided_artifact"], *inputs, "--out", str(work / "guided"), "--engine", "ray",
                  "--workers", "2", "--batch-size", str(spec["batch_size"])]  # fmt: skip
        results["guided"] = _cli(guided)
        results["listeners_end"] = _listeners()
    results["ray_initialized_after"] = ray.is_initialized()
    # `gradcam bench --ray`, smallest run: its own cluster, started after the one above is down
    bench = ["bench", "--ray", "--artifact", artifact, "--images", "4", "--size", "64", "48", "--batch-size", "2",
             "--config", "1x1", "--workdir", str(work / "bench"), "--json", str(work / "bench-ray.json")]  # fmt: skip
    results["bench"] = _cli(bench)
    results["quiet"] = _noise(artifact, inputs, work)
    results["hang"] = _sigterm_while_connecting(artifact, inputs, work)
    results["seconds"] = time.time() - results["started"]
    return results


if __name__ == "__main__":
    spec = json.loads(Path(sys.argv[1]).read_text())
    Path(spec["results"]).write_text(json.dumps(run(spec), indent=2))
