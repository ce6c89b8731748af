"""``gradcam evaluate --compare-methods/--randomize-check``: the build side of ``gradcam evaluate`` (torch).

Imported by :mod:`gradcam_model.cli.evaluate` only when one of the two flags is given.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from ..checks.evaluation import build_wrappers, compare_methods
from ..graph.methods import get_method
from . import _common as common
from .validate import _reference_model

__all__ = ["run_build_side"]


def _evaluate_options(args: argparse.Namespace, items, images: np.ndarray, sizes, meta) -> dict:
    """``runtime.evaluate`` keywords from the ``gradcam evaluate`` flags (as its serve-side path reads them)."""
    from ..runtime.boxes import image_names, read_boxes
    from ..runtime.inputs import resolve_class
    from .evaluate import evaluate_options

    return {
        **evaluate_options(args),
        "boxes": read_boxes(args.boxes, items, sizes, images.shape[2:], meta) if args.boxes else None,
        "class_index": None if args.class_ is None else resolve_class(args.class_, meta),
        "names": image_names(items),
    }


def run_build_side(args: argparse.Namespace, items) -> int:
    """``gradcam evaluate --compare-methods/--randomize-check``: 1 when an artifact fails parity or a method
    fails the randomization check."""
    from ..checks.randomization import randomization_check
    from ..runtime import load_explainer
    from ..runtime.boxes import load_inputs

    methods = [get_method(m).name for m in args.methods] if args.methods else None  # unknown names: before any work
    meta = load_explainer(args.artifact, device="cpu").metadata
    out = common.output_dir(args.out)
    model = _reference_model(args, meta)
    images, sizes = load_inputs(items, meta)
    options = _evaluate_options(args, items, images, sizes, meta)
    example = torch.randn(1, meta.in_channels, *images.shape[2:], generator=torch.Generator().manual_seed(0))
    common.status("building one Grad-CAM graph per method")
    wrappers, refused = build_wrappers(
        model,
        methods,
        example_input=example,
        target_layer=args.target_layer or meta.target_layer,
        class_names=meta.class_names,
        mean=meta.mean,
        std=meta.std,
        architecture=meta.architecture,
    )
    failed = False
    if args.compare_methods:
        comparison = compare_methods(
            model,
            images,
            out_dir=out,
            wrappers=wrappers,
            not_built=refused,
            evaluate_options=options,
            progress=common.status,
        )
        print(comparison.table(), end="")
        failed = bool(comparison.parity_failed)
    if args.randomize_check:
        common.status("randomization check")
        result = randomization_check(model, images, wrappers, progress=common.status)
        common.write_text(out / "randomization.md", result.table() + "\n")
        common.write_text(out / "randomization.json", result.to_json())
        print(result.table())
        failed = failed or bool(result.flagged)
    print(f"wrote {out}")
    return 1 if failed else 0
