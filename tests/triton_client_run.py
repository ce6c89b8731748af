"""Helper of tests/test_triton_server.py and scripts/bench_triton.py: tritonclient requests, in a process of their own.

Usage: ``python triton_client_run.py JOB.pkl RESULT.pkl``. tritonclient.grpc and kserve register
the same protobuf messages and cannot share a process, so the clients run here, never in the
pytest process. ``JOB``: ``{"protocol": "http"|"grpc", "url", "model", "threads", "requests":
[{"inputs": [(name, datatype, array)], "outputs": [names] or None}], "repeat": n}``. ``RESULT``: per
request ``{"outputs": {name: array}}`` or ``{"error": message, "status"}``, with its ``"seconds"``; ``"wall"``:
the seconds from the first request to the last answer (the clients connected before).
Every client is closed before this process exits (a client left open delays Triton's shutdown).
"""

from __future__ import annotations

import pickle
import sys
import time
from concurrent.futures import ThreadPoolExecutor


def _client(protocol: str, url: str):
    if protocol == "grpc":
        import tritonclient.grpc as module
    else:
        import tritonclient.http as module
    return module, module.InferenceServerClient(url)


def _one(module, client, model: str, request: dict, protocol: str) -> dict:
    from tritonclient.utils import InferenceServerException

    inputs = []
    for name, datatype, array in request["inputs"]:
        tensor = module.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    names = request.get("outputs")
    kwargs = {} if protocol == "grpc" else {"binary_data": True}
    outputs = [module.InferRequestedOutput(n, **kwargs) for n in names] if names else None
    started = time.perf_counter()
    try:
        result = client.infer(model, inputs, outputs=outputs)
    except InferenceServerException as exc:
        return {"error": exc.message(), "status": exc.status(), "seconds": time.perf_counter() - started}
    seconds = time.perf_counter() - started
    response = result.get_response(as_json=True) if protocol == "grpc" else result.get_response()
    returned = [o["name"] for o in response["outputs"]]
    return {"outputs": {n: result.as_numpy(n) for n in returned}, "seconds": seconds}


def run(job: dict) -> tuple[list[dict], float]:
    """The result of each request, in order, and the seconds from the first request to the last answer."""
    protocol, threads = job["protocol"], job.get("threads", 1)
    requests = job["requests"] * job.get("repeat", 1)
    clients = [_client(protocol, job["url"]) for _ in range(threads)]
    chunks = [list(range(i, len(requests), threads)) for i in range(threads)]
    results: list = [None] * len(requests)

    def work(t: int) -> None:
        module, client = clients[t]
        for i in chunks[t]:
            results[i] = _one(module, client, job["model"], requests[i], protocol)

    try:
        started = time.perf_counter()
        if threads == 1:
            work(0)
        else:
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(work, range(threads)))
        return results, time.perf_counter() - started
    finally:
        for _, client in clients:
            client.close()


def main(argv: list[str]) -> int:
    with open(argv[0], "rb") as handle:
        job = pickle.load(handle)
    results, wall = run(job)
    with open(argv[1], "wb") as handle:
        pickle.dump({"results": results, "wall": wall}, handle)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
