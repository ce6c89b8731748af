"""Benchmark ``gradcam serve``: p50/p99 latency and requests/s on loopback vs the in-process explainer.

``gradcam bench --serve``: one run. A server subprocess on 127.0.0.1 serves the artifact;
client threads (each on its own keep-alive connection) post one 224x224 picture per
request: a v2 binary-tensor request (the preprocessed image as raw FP32, outputs as raw
bytes) and a v1 ``:explain`` with a compact map (``--output``, default an 8-bit grey PNG)
at concurrency 1, and ``:explain`` with a JPEG overlay at concurrency 1, 4 and 16.
In the same run the same pictures go through this process: the bare explainer call on a
preprocessed image (twice: ONNX Runtime's default session, whose idle threads spin, and the
server's, whose idle threads sleep; the server's figures are measured over the faster of the
two), the whole ``:explain`` request work without HTTP (on the server's session), and
``explain_files`` (JPEG overlays, CSV, grid). The ways take turns in interleaved rounds,
so each sees the same load from whatever else runs. Serve side only with ``--artifact``;
without it EfficientNet-Lite0 is exported first (``[export,demo]``). Needs the ``[serve]``
extra.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..serving.protocol import OUTPUT_KINDS
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
    server_workers: int
    server_spinning: bool  # gradcam serve --ort-spinning
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    machine: str

    @property
    def base(self) -> Timing:
        """The bare in-process call the others are measured over: the faster of the two sessions."""
        return min((t for t in self.timings if t.what in (BARE, BARE_ASLEEP)), key=lambda t: t.p50_ms)

    def table(self) -> str:
        base = self.base
        lines = [
            "| what | concurrency | requests | requests/s | p50 ms | p99 ms | p50 - bare p50 |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for t in self.timings:
            lines.append(
                f"| {t.what} | {t.concurrency} | {t.requests} | {t.rate:.1f} | {t.p50_ms:.1f} | {t.p99_ms:.1f} "
                f"| {t.p50_ms - base.p50_ms:+.1f} |"
            )
        return "\n".join(lines)

    def targets(self) -> list[str]:
        base, by = self.base, {(t.what, t.concurrency): t for t in self.timings}
        lines = []
        for what, target in ((V2, 3.0), (COMPACT, 5.0)):
            if (what, 1) in by:
                gap = by[what, 1].p50_ms - base.p50_ms
                lines.append(f"{what}: p50 at concurrency 1 is {gap:+.1f} ms over the bare in-process call "
                             f"(target <= {target:g} ms): " + ("met" if gap <= target else "missed"))  # fmt: skip
        files = by.get((FILES, 1))
        busiest = max((t for t in self.timings if t.what == OVERLAY), key=lambda t: t.concurrency, default=None)
        if files and busiest:
            ratio = busiest.rate / files.rate
            lines.append(f"{OVERLAY} at concurrency {busiest.concurrency}: {ratio:.2f}x the rate of explain_files on "
                         "the same pictures (target >= 0.8x): " + ("met" if ratio >= 0.8 else "missed"))  # fmt: skip
        return lines


V2 = "HTTP v2 binary tensor"
COMPACT = "HTTP :explain, compact map"
OVERLAY = "HTTP :explain, JPEG overlay"
FILES = "explain_files (JPEG overlays, CSV, grid)"
WORK = "in-process :explain work, no HTTP"
BARE = "in-process explainer (preprocessed, batch 1)"
BARE_ASLEEP = "in-process explainer, idle threads asleep"


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


def _post(connection: http.client.HTTPConnection, path: str, body: tuple[bytes, dict]) -> bytes:
    connection.request("POST", path, body=body[0], headers=body[1])
    response = connection.getresponse()
    data = response.read()
    if response.status != 200:
        raise RuntimeError(f"the server answered {response.status}: {data[:200]!r}")
    return data


def _v1_body(jpeg: bytes, output: str) -> tuple[bytes, dict]:
    body = json.dumps({"instances": [{"b64": base64.b64encode(jpeg).decode()}], "output": output}).encode()
    return body, {"content-type": "application/json"}


def _v2_body(image: np.ndarray) -> tuple[bytes, dict]:
    """One preprocessed image as a binary-tensor request; every output comes back as raw bytes."""
    raw = np.ascontiguousarray(image, np.float32).tobytes()
    header = json.dumps({
        "inputs": [{"name": "image", "datatype": "FP32", "shape": list(image.shape),
                    "parameters": {"binary_data_size": len(raw)}}],
        "parameters": {"binary_data_output": True},
    }).encode()  # fmt: skip
    return header + raw, {"Inference-Header-Content-Length": str(len(header))}


def _http(port: int, path: str, bodies: list[tuple[bytes, dict]], concurrency: int, indices: list[int]):
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


@contextlib.contextmanager
def _server(artifact: Path, port: int, argv: list[str], log: Path) -> Iterator[subprocess.Popen]:
    """A ``gradcam serve`` with options ``argv`` on 127.0.0.1:``port``, ready; stopped by SIGTERM (killed after
    60 s) on exit."""
    process = _start_server(artifact, port, argv, log)
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()


def _start_server(artifact: Path, port: int, options: list[str], log: Path) -> subprocess.Popen:
    argv = [sys.executable, "-m", "gradcam_model", "serve", str(artifact), "--name", "bench", "--port", str(port)]
    argv += ["--grpc-port", "0", *options]
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


def _rounds(runners: dict, requests: int, rounds: int) -> dict:
    """Each way's latencies and seconds, its ``requests`` split into ``rounds`` interleaved rounds, so that
    every way sees the same load from whatever else runs on the machine."""
    measured = {way: ([], 0.0) for way in runners}
    for chunk in np.array_split(np.arange(requests), rounds):
        for way, run in runners.items():
            latencies, seconds = run(chunk.tolist())
            measured[way] = (measured[way][0] + list(latencies), measured[way][1] + seconds)
    return measured


def _requests(jpegs: list[bytes], inputs: list[np.ndarray], output: str) -> tuple[dict, dict]:
    """The request bodies of each HTTP way, one per picture, and the path each goes to."""
    bodies = {
        V2: [_v2_body(x) for x in inputs],
        COMPACT: [_v1_body(j, output) for j in jpegs],
        OVERLAY: [_v1_body(j, "jpeg") for j in jpegs],
    }
    paths = {V2: "/v2/models/bench/infer", COMPACT: "/v1/models/bench:explain", OVERLAY: "/v1/models/bench:explain"}
    return bodies, paths


def run_serve_bench(
    artifact: Path,
    images: list[Path],
    workdir: Path,
    *,
    requests: int = 200,
    levels: tuple[int, ...] = (1, 4, 16),
    output: str = "map_png",
    threads: int = 4,
    workers: int = 1,
    rounds: int = 4,
    ort_spinning: bool = False,
    extra: Sequence[tuple[str, int, Callable[[list[int]], tuple[list[float], float]]]] = (),
) -> ServeResult:
    """Time the in-process ways and the server's on the same pictures.

    The ``requests`` of each way are split into ``rounds`` interleaved rounds. ``extra``:
    more ways ``(what, concurrency, run)`` timed in the same rounds, ``run(indices)``
    sending picture ``i % len(images)`` for each index and returning the latencies and
    seconds (``scripts/bench_triton.py`` adds a real Triton server's this way).
    """
    from ..runtime import OnnxExplainer, decode_image, explain_files, load_explainer, preprocess
    from ..serving.protocol import ServeLimits, parse_v1, v1_response

    load_before = os.getloadavg()
    explainer = load_explainer(artifact)
    meta = explainer.metadata
    jpegs = [p.read_bytes() for p in images]
    inputs = [preprocess(decode_image(j), meta)[None] for j in jpegs]
    bodies, paths = _requests(jpegs, inputs, output)
    asleep = OnnxExplainer(artifact, spinning=False)
    for x in inputs[:3]:
        explainer(x)  # warm-up
        asleep(x)
    as_served = explainer if ort_spinning else asleep  # the server's session

    def request_work(body: tuple[bytes, dict]) -> bytes:
        batch = parse_v1(json.loads(body[0]), meta, ServeLimits(), explain=True)
        return json.dumps(v1_response(as_served(batch.images, batch.classes), batch, explain=True)).encode()

    def files(indices: list[int]) -> tuple[list[float], float]:
        started = time.perf_counter()
        explain_files(explainer, [images[i % len(images)] for i in indices], workdir / "explain_files",
                      overwrite=True, progress=False)  # fmt: skip
        seconds = time.perf_counter() - started
        return [seconds / len(indices)] * len(indices), seconds  # per-image mean: a rate, not a latency

    port = _free_port()

    def http(what: str, level: int):
        return lambda indices: _http(port, paths[what], bodies[what], level, indices)

    runners = {
        (BARE, 1): lambda indices: _in_process(explainer, inputs, indices),
        (BARE_ASLEEP, 1): lambda indices: _in_process(asleep, inputs, indices),
        (WORK, 1): lambda indices: _in_process(request_work, bodies[COMPACT], indices),
        (V2, 1): http(V2, 1),
        (COMPACT, 1): http(COMPACT, 1),
        **{(OVERLAY, level): http(OVERLAY, level) for level in levels},
        **{(what, level): run for what, level, run in extra},
        (FILES, 1): files,
    }
    options = ["--threads", str(threads), "--workers", str(workers), *(["--ort-spinning"] if ort_spinning else [])]
    with _server(artifact, port, options, workdir / "server.log"):
        for name in (V2, COMPACT, OVERLAY):
            _http(port, paths[name], bodies[name], 2, list(range(4)))  # warm-up
        measured = _rounds(runners, requests, rounds)
    timings = [Timing(what, level, requests, seconds, *_percentiles(lat)) for (what, level), (lat, seconds) in
               measured.items()]  # fmt: skip
    return ServeResult(
        timings=timings,
        artifact=f"{meta.architecture} {meta.method} at {meta.target_layer!r}",
        provider=getattr(explainer, "provider", "?"),
        size=tuple(int(s) for s in decode_image(jpegs[0]).shape[1::-1]),
        output=output,
        server_threads=threads,
        server_workers=workers,
        server_spinning=ort_spinning,
        load_before=tuple(round(x, 2) for x in load_before),
        load_after=tuple(round(x, 2) for x in os.getloadavg()),
        machine=sections.machine(),
    )


def markdown(result: ServeResult, requests: int, command: str | None = None) -> str:
    """The docs/benchmarks.md section, between the markers; ``command``: what generated it (``gradcam bench``)."""
    r = result
    command = command or f"gradcam bench --serve --requests {requests} --markdown docs/benchmarks.md"
    lines = [
        BEGIN,
        "## Explanation server (`gradcam serve`)",
        "",
        f"Generated by `{command}` "
        "(`gradcam_model.bench.serve`); one run on a shared machine, the ways interleaved in rounds so that they "
        "share its load; read the differences, not the absolutes.",
        "",
        f"- {r.artifact}, {r.provider}; one {r.size[0]}x{r.size[1]} picture per request: the v2 request sends it "
        f'preprocessed as raw FP32 and gets raw outputs, the compact `:explain` has `"output": "{r.output}"`; '
        f"server on 127.0.0.1 with {r.server_workers} process(es) of {r.server_threads} request threads, "
        "batching up to 8 images, ONNX Runtime's idle threads "
        + ("spinning (`--ort-spinning`)" if r.server_spinning else "asleep (its default)")
        + "; the HTTP clients run in the benchmark process on the same cores; "
        "explain_files's figure is its mean time per picture; the last column is measured over the faster of "
        "the two bare in-process calls (ONNX Runtime's default session, whose idle threads spin, and one whose "
        "idle threads sleep)",
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
    parser.add_argument(
        "--output", choices=OUTPUT_KINDS, default="map_png", help="the compact :explain's maps as (default: map_png)"
    )
    parser.add_argument("--threads", type=int, default=4, metavar="N", help="server request threads (default: 4)")
    parser.add_argument("--workers", type=int, default=1, metavar="N", help="server processes (default: 1)")
    parser.add_argument("--rounds", type=int, default=4, metavar="R", help="interleaved rounds (default: 4)")
    parser.add_argument("--ort-spinning", action="store_true", help="start the server with --ort-spinning")
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
            workers=args.workers,
            rounds=args.rounds,
            ort_spinning=args.ort_spinning,
        )
    print(result.table())
    for line in result.targets():
        print(line)
    sections.write(args, result, markdown(result, args.requests))
    return 0
