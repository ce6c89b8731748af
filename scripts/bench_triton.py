"""Time the Triton python-backend path (``gradcam triton --backend python``) against the bare in-process call.

Usage: ``python scripts/bench_triton.py ARTIFACT.onnx [--pictures 32] [--rounds 3] [--out RESULT.json]``

One run, the ways interleaved in rounds on the same JPEG pictures (320x240, smooth noise):
the in-process explainer call on the preprocessed picture (batch 1), the in-process
decode + preprocess + call, and a real tritonserver 2.51 (tests/triton_server.py: nvidia-pytriton,
127.0.0.1, the model in its numpy-1 environment) called by tritonclient over HTTP and gRPC
with the encoded picture, at concurrency 1 (p50 per request) and 16 (requests per second).
Requests ask for the five contract outputs (no overlays). Prints a Markdown table and the
machine's load average before and after; the clients run in their own process
(tests/triton_client_run.py), on the same cores as the server.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import triton_server  # noqa: E402  (tests/: the server recipe lives once, with its tests)

from gradcam_model.runtime import decode_image, load_explainer, preprocess  # noqa: E402
from gradcam_model.serving.triton import TritonOptions, write_repository  # noqa: E402

OUTPUTS = ["logits", "probabilities", "class_index", "score", "cam"]


def _pictures(count: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        picture = cv2.GaussianBlur(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8), (9, 9), 3)
        out.append(cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
    return out


def _in_process(explainer, pictures: list[bytes], *, decode: bool) -> list[float]:
    inputs = [preprocess(decode_image(p), explainer.metadata)[None] for p in pictures]
    seconds = []
    for p, x in zip(pictures, inputs, strict=True):
        started = time.perf_counter()
        if decode:
            x = preprocess(decode_image(p), explainer.metadata)[None]
        explainer(x)
        seconds.append(time.perf_counter() - started)
    return seconds


def _triton(server, work: Path, protocol: str, pictures: list[bytes], threads: int) -> tuple[list[float], float]:
    requests = [
        {"inputs": [("image_bytes", "BYTES", np.array([[p]], dtype=np.object_))], "outputs": OUTPUTS} for p in pictures
    ]
    job = {"protocol": protocol, "url": server.http if protocol == "http" else server.grpc, "model": "bench"}
    job.update(requests=requests, threads=threads)
    path = work / "job.pkl"
    path.write_bytes(pickle.dumps(job))
    runner = ROOT / "tests" / "triton_client_run.py"
    subprocess.run([sys.executable, str(runner), str(path), str(path) + ".out"], check=True, timeout=600)
    result = pickle.loads(Path(str(path) + ".out").read_bytes())
    errors = [r["error"] for r in result["results"] if "error" in r]
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed: {errors[0]}")
    return [r["seconds"] for r in result["results"]], result["wall"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact")
    parser.add_argument("--pictures", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", help="write the figures as JSON here too")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    pictures = _pictures(args.pictures)
    explainer = load_explainer(args.artifact, providers=["CPUExecutionProvider"])
    times: dict[str, list[float]] = {}
    rates: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="gradcam-bench-triton-") as tmp:
        work = Path(tmp)
        env = triton_server.stub_environment(work / "stub-env")
        options = TritonOptions(backend="python", execution_env=str(env))
        write_repository(args.artifact, work / "repo", "bench", options=options)
        (work / "server").mkdir()
        server = triton_server.start(work / "repo", work / "server", ["bench"])
        try:
            _triton(server, work, "http", pictures[:4], 1)  # warm-up: the stub's first call
            for _ in range(args.rounds):
                for key, decode in (("in-process call", False), ("in-process decode + call", True)):
                    seconds = _in_process(explainer, pictures, decode=decode)
                    times.setdefault(key, []).extend(seconds)
                    rates.setdefault(key, []).append(len(seconds) / sum(seconds))
                for protocol in ("http", "grpc"):
                    for threads in (1, 16):
                        seconds, wall = _triton(server, work, protocol, pictures, threads)
                        key = f"Triton {protocol}, concurrency {threads}"
                        times.setdefault(key, []).extend(seconds)
                        rates.setdefault(key, []).append(len(seconds) / wall)
        finally:
            code = triton_server.stop(server)
        leaked = triton_server.shm_regions() - server.shm_before
    load_after = os.getloadavg()
    rows = {
        key: {
            "p50_ms": 1e3 * float(np.median(times[key])),
            "p99_ms": 1e3 * float(np.percentile(times[key], 99)),
            "requests_per_s": float(np.median(rates[key])),
        }
        for key in times
    }
    print(f"artifact {args.artifact}; {args.pictures} JPEG pictures 320x240 x {args.rounds} rounds, interleaved")
    print(f"load average before {load_before[0]:.1f}, after {load_after[0]:.1f} ({os.cpu_count()} cores)")
    print("| what | requests/s | p50 ms | p99 ms |\n|---|---:|---:|---:|")
    for key, row in rows.items():
        print(f"| {key} | {row['requests_per_s']:.1f} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} |")
    bare = rows["in-process call"]["p50_ms"]
    for protocol in ("http", "grpc"):
        over = rows[f"Triton {protocol}, concurrency 1"]["p50_ms"] - bare
        print(f"{protocol} p50 over the bare call: {over:+.1f} ms")
    print(f"tritonserver exit code {code}; shared-memory regions left: {sorted(leaked) or 'none'}")
    if args.out:
        record = {"rows": rows, "load": [load_before[0], load_after[0]], "exit_code": code, "leaked": sorted(leaked)}
        Path(args.out).write_text(json.dumps(record, indent=1))
    return 0 if code == 0 and not leaked else 1


if __name__ == "__main__":
    sys.exit(main())
