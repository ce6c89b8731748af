"""Time a real Triton server's python-backend path beside ``gradcam serve`` and the in-process calls, in one run.

Usage: ``python scripts/bench_triton.py ARTIFACT.onnx [--images 32] [--requests 96] [--rounds 3] [--ort-spinning]
[--out RESULT.json]``

``gradcam bench --serve``'s run (``gradcam_model.bench.serve.run_serve_bench``: the bare
in-process call, the in-process ``:explain`` work, ``gradcam serve``'s v2 binary tensor,
compact ``:explain`` and JPEG-overlay ways, ``explain_files``) with four more ways in the
same interleaved rounds on the same 224x224 JPEGs: a real tritonserver 2.51
(tests/triton_server.py: nvidia-pytriton, 127.0.0.1, the model of ``gradcam triton
--backend python`` in its numpy-1 environment) called by tritonclient over HTTP and gRPC
with the encoded picture, asking for the five contract outputs, at concurrency 1 and 16.
The Triton clients run in their own process (tests/triton_client_run.py), on the same cores
as both servers. Prints the table, the targets and tritonserver's exit; ``--out`` keeps them
as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import triton_server  # noqa: E402  (tests/: the server recipe lives once, with its tests)

from gradcam_model.bench.sections import generate_jpegs  # noqa: E402
from gradcam_model.bench.serve import markdown, run_serve_bench  # noqa: E402
from gradcam_model.serving.triton import TritonOptions, write_repository  # noqa: E402

OUTPUTS = ["logits", "probabilities", "class_index", "score", "cam"]


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
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--requests", type=int, default=96, help="requests per way (default: 96)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ort-spinning", action="store_true", help="start gradcam serve with --ort-spinning")
    parser.add_argument("--out", help="write the figures as JSON here too")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gradcam-bench-triton-") as tmp:
        work = Path(tmp)
        images = generate_jpegs(work / "images", args.images, (224, 224))
        jpegs = [p.read_bytes() for p in images]
        env = triton_server.stub_environment(work / "stub-env")
        options = TritonOptions(backend="python", execution_env=str(env))
        write_repository(args.artifact, work / "repo", "bench", options=options)
        (work / "server").mkdir()
        server = triton_server.start(work / "repo", work / "server", ["bench"])

        def way(protocol: str, threads: int):
            def run(indices: list[int]) -> tuple[list[float], float]:
                return _triton(server, work, protocol, [jpegs[i % len(jpegs)] for i in indices], threads)

            return f"Triton python backend, {protocol}, encoded picture", threads, run

        try:
            _triton(server, work, "http", jpegs[:4], 1)  # warm-up: the stub's first call
            extra = [way(protocol, threads) for threads in (1, 16) for protocol in ("http", "grpc")]
            result = run_serve_bench(Path(args.artifact), images, work, requests=args.requests, rounds=args.rounds,
                                     ort_spinning=args.ort_spinning, extra=extra)  # fmt: skip
        finally:
            code = triton_server.stop(server)
        leaked = triton_server.shm_regions() - server.shm_before
    command = f"python scripts/bench_triton.py ARTIFACT --requests {args.requests} --rounds {args.rounds}"
    command += " --ort-spinning" if args.ort_spinning else ""
    print(markdown(result, args.requests, command))
    print(f"tritonserver exit code {code}; shared-memory regions left: {sorted(leaked) or 'none'}")
    if args.out:
        record = {
            "timings": [dataclasses.asdict(t) for t in result.timings],
            "targets": result.targets(),
            "load": [result.load_before, result.load_after],
            "exit_code": code,
            "leaked": sorted(leaked),
        }
        Path(args.out).write_text(json.dumps(record, indent=1))
    return 0 if code == 0 and not leaked else 1


if __name__ == "__main__":
    sys.exit(main())
