"""The C++ library vs the Python runtime on the pipeline benchmark's images, in one run.

    python scripts/bench_cpp_library.py BUILD_DIR [--images N] [--batch B] [--workdir DIR]

BUILD_DIR holds a cpp/ build (``gradcam_library_check``). Both sides decode the same
generated 640x480 JPEGs, apply the artifact's preprocessing and run EfficientNet-Lite0
(``gradcam bench``'s default artifact) in batches under ONNX Runtime with its default
threads, after one warm-up batch; the two are timed alternately, best of ``--rounds``.
Prints one markdown table row per side.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from gradcam_model.bench.sections import default_artifact, generate_jpegs
from gradcam_model.runtime import load_explainer, load_image, preprocess


def python_seconds(artifact: Path, images: list[Path], batch: int) -> float:
    explainer = load_explainer(artifact, providers=["CPUExecutionProvider"])
    meta = explainer.metadata

    def run(paths):
        explainer(np.stack([preprocess(load_image(p), meta) for p in paths]))

    run(images[:batch])  # warm-up, as the C++ side
    start = time.perf_counter()
    for i in range(0, len(images), batch):
        run(images[i : i + batch])
    return time.perf_counter() - start


def cpp_seconds(check: Path, artifact: Path, images: list[Path], batch: int) -> float:
    result = subprocess.run([str(check), "bench", str(artifact), str(batch), *map(str, images)],
                            capture_output=True, text=True, check=True)  # fmt: skip
    return float(result.stdout.split(" in ")[1].split()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("build_dir", type=Path)
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gradcam-bench-cpp-") as tmp:
        workdir = args.workdir or Path(tmp)
        artifact = default_artifact(workdir)
        images = generate_jpegs(workdir / "images", args.images, (640, 480))
        python, cpp = [], []
        for _ in range(args.rounds):  # alternated, so that both share the machine's load
            python.append(python_seconds(artifact, images, args.batch))
            cpp.append(cpp_seconds(args.build_dir / "gradcam_library_check", artifact, images, args.batch))
    for name, seconds in (("Python runtime: load_image + preprocess + Explainer", min(python)),
                          ("C++ library: load_image + Explainer::explain", min(cpp))):  # fmt: skip
        print(f"| {name} | {args.images} | {seconds:.2f} | {args.images / seconds:.1f} |")


if __name__ == "__main__":
    main()
