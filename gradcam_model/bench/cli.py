"""Time Grad-CAM artifacts against the logits-only model, pytorch-grad-cam and Captum.

The options and the run of plain ``gradcam bench`` (a section of the ``bench`` command,
see :mod:`gradcam_model.cli.bench`).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from .configs import CONFIGS, QUICK_CONFIGS, select_configs
from .report import marked_sections, update_section

__all__ = ["add_arguments", "run"]

BUILDS_ARTIFACTS = True  # `gradcam bench` checks the build side is installed first


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value

    return parse


def _device_name(text: str) -> str:
    if re.fullmatch(r"auto|cpu|cuda(:\d+)?", text.strip()) is None:
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}")
    return text.strip()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``gradcam bench`` options."""
    names = ", ".join(c.name for c in (*CONFIGS, *QUICK_CONFIGS))
    parser.add_argument(
        "--config",
        action="append",
        metavar="NAME",
        help=f"run only this configuration (repeatable; shell patterns work). Known: {names}",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 64 px, batch 2, 1 repetition (resnet18 unless --config)"
    )
    parser.add_argument(
        "--repeats",
        type=_int_at_least(1),
        default=None,
        metavar="N",
        help="timed interleaved rounds (default 15, quick 1)",
    )
    parser.add_argument(
        "--warmup", type=_int_at_least(0), default=None, metavar="N", help="untimed rounds first (default 3, quick 1)"
    )
    parser.add_argument(
        "--threads",
        type=_int_at_least(1),
        default=None,
        metavar="N",
        help="threads for torch and ONNX Runtime (default: usable cores)",
    )
    parser.add_argument(
        "--memory-runs",
        type=_int_at_least(0),
        default=None,
        metavar="N",
        help="runs per ONNX Runtime memory measurement; 0 skips them (default 3, quick 1)",
    )
    parser.add_argument(
        "--ort-spinning", action="store_true", help="let ONNX Runtime's idle threads spin (off: fairer interleaving)"
    )
    parser.add_argument(
        "--device",
        default="auto",
        type=_device_name,
        metavar="D",
        help="auto (a CUDA GPU when torch sees one, else the CPU), cpu, cuda or cuda:N",
    )
    parser.add_argument("--workdir", metavar="DIR", help="keep the exported artifacts in DIR")
    parser.add_argument("--json", metavar="FILE", help="write the full results as JSON")
    parser.add_argument("--markdown", metavar="FILE", help="write the report as Markdown (docs/benchmarks.md)")
    parser.add_argument(
        "--check-targets", action="store_true", help="exit with status 1 when a configuration misses its speed target"
    )


def run(args: argparse.Namespace) -> int:
    """Run ``gradcam bench``; print the tables; return the exit status."""
    from .machine import resolve_device
    from .timing import run_benchmark

    configs = select_configs(args.config, quick=args.quick)
    device = resolve_device(args.device)
    print(f"benchmarking {len(configs)} configuration(s): {', '.join(c.name for c in configs)}", flush=True)
    result = run_benchmark(
        configs,
        quick=args.quick,
        repeats=args.repeats,
        warmup=args.warmup,
        threads=args.threads,
        memory_runs=args.memory_runs,
        ort_spinning=args.ort_spinning,
        workdir=args.workdir,
        progress=lambda line: print(line, flush=True),
        device=device,
    )
    print()
    print(result.to_table())
    for option, text in ((args.json, result.to_json()), (args.markdown, result.to_markdown())):
        if option:
            path = Path(option)
            path.parent.mkdir(parents=True, exist_ok=True)
            kept = marked_sections(path) if option == args.markdown else []
            path.write_text(text + ("\n" if not text.endswith("\n") else ""))
            for section in kept:  # other sections (`gradcam bench --pipeline`...) own these parts of the file
                update_section(path, section)
            print(f"wrote {path}")
    missed = [t for t in result.targets() if not t.met]
    return 1 if args.check_targets and missed else 0
