"""The ONNX Runtime memory probe: peak memory of one session, measured in a fresh interpreter without torch.

``python -m gradcam_model.bench.memory '[path, shape, threads, spinning, runs]'`` prints
the figures of :func:`ort_peak_memory` as JSON; :func:`measure` runs it and reads them.
Nothing here imports torch or the build side.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import GradCAMError

__all__ = ["PROBES", "measure", "ort_peak_memory"]


def _status_mb(key: str) -> float | None:
    """A ``/proc/self/status`` figure in MB (``VmHWM``, ``VmRSS``); None where there is no such file."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:  # not Linux: the caller falls back to getrusage
        return None
    return None


def _high_water_mb() -> float:
    """The process's resident high-water mark in MB."""
    mark = _status_mb("VmHWM")
    if mark is not None:
        return mark
    scale = 2**20 if sys.platform == "darwin" else 2**10  # ru_maxrss: bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def ort_peak_memory(path: str, shape: list[int], threads: int, spinning: bool, runs: int) -> dict:
    """Peak resident memory that one ONNX Runtime session adds to a fresh process.

    Meant for a fresh interpreter that imports only numpy and onnxruntime (:func:`measure`
    runs ``python -m gradcam_model.bench.memory``). The figures are growth of the process's
    resident-set high-water mark from the point where the libraries are loaded and the input
    exists: after the session is created (``load_mb``: the model file, weights, graph
    optimization and pre-packed kernels, transient copies included) and after
    ``runs`` runs (``peak_mb``: that or the run's working set with ONNX Runtime's
    arena for intermediate tensors at this batch size, whichever is higher);
    ``resident_mb`` is what stays resident after the runs. On Linux the mark
    is ``VmHWM`` from ``/proc/self/status``: ``getrusage``'s ``ru_maxrss`` keeps the
    parent's mark across the fork and exec that started the probe (it read 1.3 GB
    before the session existed), so it cannot measure a child of a big process.
    """
    import onnxruntime as ort

    image = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    base, resident = _high_water_mb(), _status_mb("VmRSS")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
    loaded = _high_water_mb()
    name = session.get_inputs()[0].name
    for _ in range(runs):
        session.run(None, {name: image})
    figures = {"baseline_mb": base, "load_mb": loaded - base, "peak_mb": _high_water_mb() - base}
    if resident is not None:  # what stays resident after the runs (Linux only)
        figures["resident_mb"] = _status_mb("VmRSS") - resident
    return figures


# Fresh processes per figure, their median reported. One process's figure moves by 50-150 MB on
# the big models with the address-space layout: glibc keeps the blocks ONNX Runtime frees while it
# rewrites conv weights into its blocked layout in its heap, resident, and how many depends on
# where they landed (measured on VGG19: load 1107 or 1161 MB at random, 1161 every time with
# `setarch -R`; `malloc_trim(0)` returned ~110 MB in both the artifact and the logits-only model).
PROBES = 3


def measure(path: Path, shape: Sequence[int], threads: int, spinning: bool, runs: int, probes: int = PROBES) -> dict:
    """Run :func:`ort_peak_memory` in ``probes`` fresh interpreters (no torch in them); the median of each figure."""
    argument = json.dumps([str(path), list(shape), threads, spinning, runs])
    # the child imports this very package, wherever it was imported from here
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    figures = []
    for _ in range(probes):
        done = subprocess.run(
            [sys.executable, "-m", __name__, argument],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
            env=env,
        )
        if done.returncode != 0:
            raise GradCAMError(
                f"the memory probe for {Path(path).name} failed: {done.stderr.strip().splitlines()[-1:]}"
            )
        figures.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return {key: float(np.median([f[key] for f in figures])) for key in figures[0]}


if __name__ == "__main__":
    print(json.dumps(ort_peak_memory(*json.loads(sys.argv[1]))))
