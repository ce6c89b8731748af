"""The machine a benchmark runs on: the device to time on, the CPU, the cores and the library versions."""

from __future__ import annotations

import contextlib
import os
import platform
from importlib import metadata as importlib_metadata
from pathlib import Path

import torch

from ..errors import GradCAMError

__all__ = ["default_threads", "machine_info", "resolve_device"]


def machine_info(threads: int, device: torch.device | None = None) -> dict:
    """The machine and library versions a result was measured with."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    versions = {}
    for dist in (
        "gradcam_model",
        "torch",
        "torchvision",
        "onnx",
        "onnxscript",
        "onnxruntime-gpu",
        "onnxruntime",
        "grad-cam",
        "captum",
        "timm",
        "numpy",
    ):
        with contextlib.suppress(importlib_metadata.PackageNotFoundError):
            versions[dist] = importlib_metadata.version(dist)
    info = {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "threads": threads,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
    }
    if device is not None and device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    with contextlib.suppress(OSError, AttributeError):
        info["load_average_at_start"] = [round(v, 2) for v in os.getloadavg()]
    return info


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"``/None: the first CUDA GPU when torch sees one, else the CPU."""
    if device is None or device == "auto":
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from None
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise GradCAMError(f"device {device!r} asked for, but torch sees no CUDA GPU; use --device cpu")
        index = resolved.index or 0
        if index >= torch.cuda.device_count():
            raise GradCAMError(f"device {device!r} asked for, but torch sees {torch.cuda.device_count()} GPU(s)")
        resolved = torch.device("cuda", index)
    return resolved


def default_threads() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
