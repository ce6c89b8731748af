"""Benchmark ``gradcam serve``: requests/s and p50/p99 latency of ``:explain`` on loopback vs the in-process explainer.

``gradcam bench --serve``: one run. A server subprocess on 127.0.0.1 serves the artifact;
client threads (1, 4, 16 at once, each on its own keep-alive connection) post one
224x224 JPEG per request. In the same run the same pictures go through the explainer in
this process, as the bare call on a preprocessed image and as the whole request work
(decode, preprocess, run, PNG overlay, JSON) without HTTP. The ways take turns in
interleaved rounds, so each sees the same load from whatever else runs. Serve side only with
``--artifact``; without it EfficientNet-Lite0 is exported first (``[export,demo]``).
Needs the ``[serve]`` extra.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import sections

__all__ = ["ServeResult", "add_arguments", "markdown", "run", "run_serve_bench"]

BEGIN = "<!-- serve-bench -->"
END = "<!-- /serve-bench -->"
_READY_TIMEOUT = 120  # seconds


@dataclass
class Timing:
    """Latencies (ms) of one way of explaining, and its rate."""

    what: str
    concurrency: int
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


@dataclass
class ServeResult:
    """Every timing of one run, and the context it was measured in."""

    timings: list[Timing]
    artifact: str
    provider: str
    size: tuple[int, int]
    output: str
    server_threads: int
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    machine: str

    def table(self) -> str:
        base = self.timings[0]
        lines = [
            "| what | concurrency | requests | requests/s | p50 ms | p99 ms | p50 - in-process p50 |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for t in self.timings:
            lines.append(
                f"| {t.what} | {t.concurrency} | {t.requests} | {t.rate:.1f} | {t.p50_ms:.1f} | {t.p99_ms:.1f} "
                f"| {t.p50_ms - base.p50_ms:+.1f} |"
            )
        return "\n".join(lines)

    def targets(self) -> list[str]:
        base, by = self.timings[0], {(t.what, t.concurrency): t for t in self.timings}
        one, sixteen = by.get(("HTTP :explain", 1)), by.get(("HTTP :explain", 16))
        work = by.get(("in-process request work, no HTTP", 1))
        lines = []
        if one and work:
            lines.append(f"HTTP and kserve add {one.p50_ms - work.p50_ms:.1f} ms at p50 to the same request work done "
                         "in process (decode, resize, run, overlay PNG, JSON)")  # fmt: skip
        if one:
            gap = one.p50_ms - base.p50_ms
            lines.append(f"p50 at concurrency 1 is {gap:.1f} ms over the in-process call (target <= 15 ms): "
                         + ("met" if gap <= 15 else "missed"))  # fmt: skip
        if sixteen:
            ratio = sixteen.rate / base.rate
            lines.append(f"throughput at concurrency 16 is {ratio:.2f}x the in-process batch-1 rate (target >= 0.8x): "
                         + ("met" if ratio >= 0.8 else "missed"))  # fmt: skip
        return lines


def _percentiles(latencies: list[float]) -> tuple[float, float]:
    ms = np.asarray(latencies) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def _in_process(fn, items: list, indices: list[int]) -> tuple[list[float], float]:
    latencies = []
    started = time.perf_counter()
    for i in indices:
        t0 = time.perf_counter()
        fn(items[i % len(items)])
        latencies.append(time.perf_counter() - t0)
    return latencies, time.perf_counter() - started


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(connection: http.client.HTTPConnection, path: str, body: bytes) -> dict:
    connection.request("POST", path, body=body, headers={"content-type": "application/json"})
    response = connection.getresponse()
    data = response.read()
    if response.status != 200:
        raise RuntimeError(f"the server answered {response.status}: {data[:200]!r}")
    return json.loads(data)


def _http(port: int, path: str, bodies: list[bytes], concurrency: int, indices: list[int]):
    per_thread = [indices[i::concurrency] for i in range(concurrency)]

    def client(part: list[int]) -> list[float]:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        latencies = []
        try:
            for i in part:
                t0 = time.perf_counter()
                _post(connection, path, bodies[i % len(bodies)])
                latencies.append(time.perf_counter() - t0)
        finally:
            connection.close()
        return latencies

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        latencies = [x for part in pool.map(client, per_thread) for x in part]
    return latencies, time.perf_counter() - started


def _start_server(artifact: Path, port: int, threads: int, log: Path) -> subprocess.Popen:
    argv = [sys.executable, "-m", "gradcam_model", "serve", str(artifact), "--name", "bench", "--port", str(port)]
    argv += ["--threads", str(threads)]
    with open(log, "wb") as sink:
        process = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + _READY_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/v2/health/ready")
            if connection.getresponse().status == 200:
                return process
        except OSError:
            time.sleep(0.25)
    process.kill()
    raise RuntimeError(f"the server was not ready in {_READY_TIMEOUT} s")


def run_serve_bench(
    artifact: Path,
    images: list[Path],
    workdir: Path,
    *,
    requests: int = 200,
    levels: tuple[int, ...] = (1, 4, 16),
    output: str = "png",
    threads: int = 4,
    rounds: int = 4,
) -> ServeResult:
    """Time the in-process explainer and the server at each concurrency level on the same pictures.

    The ``requests`` of each way are split into ``rounds`` interleaved rounds.
    """
    from ..runtime import decode_image, load_explainer, preprocess
    from ..serving.protocol import ServeLimits, parse_v1, v1_response

    load_before = os.getloadavg()
    explainer = load_explainer(artifact)
    meta = explainer.metadata
    jpegs = [p.read_bytes() for p in images]
    bodies = [json.dumps({"instances": [{"b64": base64.b64encode(j).decode()}], "output": output}).encode()
              for j in jpegs]  # fmt: skip
    inputs = [preprocess(decode_image(j), meta)[None] for j in jpegs]
    for x in inputs[:3]:
        explainer(x)  # warm-up

    def request_work(body: bytes) -> bytes:
        batch = parse_v1(json.loads(body), meta, ServeLimits(), explain=True)
        return json.dumps(v1_response(explainer(batch.images, batch.classes), batch, explain=True)).encode()

    port = _free_port()
    process = _start_server(artifact, port, threads, workdir / "server.log")
    path = "/v1/models/bench:explain"
    ways = [("in-process explainer (preprocessed, batch 1)", 1), ("in-process request work, no HTTP", 1)]
    ways += [("HTTP :explain", level) for level in levels]
    measured = {way: ([], 0.0) for way in ways}
    try:
        _http(port, path, bodies, 2, list(range(8)))  # warm-up
        # interleaved rounds: every way sees the same load from whatever else runs on the machine
        for chunk in np.array_split(np.arange(requests), rounds):
            for way in ways:
                indices = chunk.tolist()
                if way[0].startswith("HTTP"):
                    latencies, seconds = _http(port, path, bodies, way[1], indices)
                elif way is ways[0]:
                    latencies, seconds = _in_process(explainer, inputs, indices)
                else:
                    latencies, seconds = _in_process(request_work, bodies, indices)
                measured[way][0].extend(latencies)
                measured[way] = (measured[way][0], measured[way][1] + seconds)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
    timings = [Timing(what, level, requests, seconds, *_percentiles(lat)) for (what, level), (lat, seconds) in
               measured.items()]  # fmt: skip
    return ServeResult(
        timings=timings,
        artifact=f"{meta.architecture} {meta.method} at {meta.target_layer!r}",
        provider=getattr(explainer, "provider", "?"),
        size=tuple(int(s) for s in decode_image(jpegs[0]).shape[1::-1]),
        output=output,
        server_threads=threads,
        load_before=tuple(round(x, 2) for x in load_before),
        load_after=tuple(round(x, 2) for x in os.getloadavg()),
        machine=f"{platform.machine()}, {os.cpu_count()} logical cores, Python {platform.python_version()}",
    )


def markdown(result: ServeResult, requests: int) -> str:
    """The docs/benchmarks.md section, between the markers."""
    r = result
    lines = [
        BEGIN,
        "## Explanation server (`gradcam serve`)",
        "",
        f"Generated by `gradcam bench --serve --requests {requests} --markdown docs/benchmarks.md` "
        "(`gradcam_model.bench.serve`); one run on a shared machine, the ways interleaved in rounds so that they "
        "share its load; read the differences, not the absolutes.",
        "",
        f'- {r.artifact}, {r.provider}; one {r.size[0]}x{r.size[1]} JPEG per request, `"output": "{r.output}"`; '
        f"server on 127.0.0.1 with {r.server_threads} request threads, batching up to 8 images; "
        "the HTTP clients run in the benchmark "
        "process on the same cores",
        f"- {r.machine}; load average before {list(r.load_before)}, after {list(r.load_after)}",
        "",
        r.table(),
        "",
        *[f"- {line}" for line in r.targets()],
        "",
        END,
    ]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``gradcam bench --serve`` options."""
    sections.add_input_arguments(parser, images=32, kind="distinct")
    parser.add_argument("--requests", type=int, default=200, metavar="N", help="requests per level (default: 200)")
    parser.add_argument("--output", choices=("png", "array"), default="png", help="maps as (default: png)")
    parser.add_argument("--threads", type=int, default=4, metavar="N", help="server request threads (default: 4)")
    parser.add_argument("--rounds", type=int, default=4, metavar="R", help="interleaved rounds (default: 4)")
    sections.add_output_arguments(parser, kept="images, artifact and the server log")


def run(args: argparse.Namespace) -> int:
    """Run ``gradcam bench --serve``; print the table; return 0."""
    with sections.inputs(args, (224, 224), prefix="gradcam-bench-serve-") as (workdir, artifact, images):
        result = run_serve_bench(
            artifact,
            images,
            workdir,
            requests=args.requests,
            output=args.output,
            threads=args.threads,
            rounds=args.rounds,
        )
    print(result.table())
    for line in result.targets():
        print(line)
    sections.write(args, result, markdown(result, args.requests))
    return 0
