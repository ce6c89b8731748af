"""Coverage sweep: every timm family's smallest model through build, pytorch-grad-cam, export and validate.

Not part of CI (it takes most of an hour on 2 cores). Each family runs in its own
process with a time limit; results go to a JSON-lines file (rerunnable: families
already there are skipped unless named with ``--families``) and the table to
docs/architectures.md.

    python scripts/timm_sweep.py                       # every family
    python scripts/timm_sweep.py --families levit,coat  # rerun some, keep the others' rows
    python scripts/timm_sweep.py --table-only           # rewrite the table from the results file

Per family: the model with the fewest parameters (counted on the meta device), random
weights (norm weights that timm initializes to 0 set to 1) with calibrated BatchNorm
(:func:`gradcam_model.checks.calibration.calibrate`), 5 classes, the smallest square input it
accepts (tried from 32 px up to its default size).
``GradCAMModel(model, "auto")``; pytorch-grad-cam's GradCAM at the chosen layer
(tests/oracle.py: its stored activations kept safe from in-place ops after the layer), with a
``reshape_transform`` derived from the layer's output shape alone, on two other images
(max |difference| of the normalized maps); ONNX export; ``validate``.
Verdicts: OK; flat (everything passed, but every map compared was all zeros, so the
comparisons prove nothing: rerun the family with a larger ``--input``); refused (one of our
errors, at build time); FAIL (any other exception, a validate failure, or maps that differ
from pytorch-grad-cam by more than 1e-3); timeout (over ``--timeout``, in the stage named).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SIZES = (32, 48, 64, 96, 128, 160, 192, 224, 240, 256, 288, 384)
PGC_LIMIT = 1e-3


def smallest_model(family: str) -> str:
    """The model of ``family`` with the fewest parameters (built on the meta device, no weights)."""
    import timm
    import torch

    best = None
    for name in timm.list_models(module=family):
        try:
            with torch.device("meta"):
                model = timm.create_model(name, pretrained=False, num_classes=5)
        except Exception:  # noqa: BLE001 - a variant that cannot be built is no candidate
            continue
        count = sum(p.numel() for p in model.parameters())
        if best is None or count < best[0]:
            best = (count, name)
    if best is None:
        raise RuntimeError(f"no model of family {family!r} builds with num_classes=5")
    return best[1]


def smallest_size(model, default: int) -> int:
    import torch

    for size in [s for s in SIZES if s < default] + [default]:
        try:
            with torch.no_grad():
                out = model(torch.zeros(1, 3, size, size))
        except Exception:  # noqa: BLE001 - too small for this model: try the next size
            continue
        if isinstance(out, torch.Tensor) and out.dim() == 2:
            return size
    return default


def _unzeroed(model):
    """``model`` with every all-zero norm weight set to 1.

    timm initializes the last norm of many residual branches with weight 0 (regnet's
    ``zero_init_last_bn``, efficientvit_msra's ``bn_weight_init=0``): with random weights such a
    branch outputs 0 and passes no gradient, so a layer inside it has an all-zero map.
    """
    import torch
    from torch import nn

    norms = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
    with torch.no_grad():
        for module in model.modules():
            weight = getattr(module, "weight", None)
            if isinstance(module, norms) and isinstance(weight, torch.Tensor) and not weight.any():
                weight.fill_(1.0)
    return model


def oracle_reshape(info):
    """pytorch-grad-cam's reshape_transform for the layer, from its output shape and map grid only."""
    channels, height, width = info.map_shape
    shape = info.output_shape
    if len(shape) == 3:
        prefix = shape[1] - height * width

        def tokens(t):
            return t[:, prefix:, :].reshape(t.size(0), height, width, t.size(2)).permute(0, 3, 1, 2)

        return tokens
    if shape[1] != channels:  # channels-last [N, h, w, C]

        def last(t):
            return t.permute(0, 3, 1, 2)

        return last
    return None


PROGRESS = "sweep-progress "


def _at(record: dict, stage: str, started: float) -> None:
    """Enter ``stage``; the record so far goes to stderr, so a family over its time says where it was.

    ``record["entered"]`` keeps the seconds from the start at which each stage began, and
    ``record["cpu_at"]`` the process's CPU seconds then (all threads): on a shared machine the
    two tell a slow stage from a starved one.
    """
    record["stage"] = stage
    record.setdefault("entered", {})[stage] = round(time.perf_counter() - started, 1)
    record.setdefault("cpu_at", {})[stage] = round(time.process_time(), 1)
    print(PROGRESS + json.dumps(record), file=sys.stderr, flush=True)


def _last_progress(stderr: str | bytes | None) -> dict:
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr or ""
    lines = [ln for ln in text.splitlines() if ln.startswith(PROGRESS)]
    return json.loads(lines[-1][len(PROGRESS) :]) if lines else {}


def run_one(family: str, size: int | None = None) -> dict:
    """Everything for one family, as a JSON-able record; ``size``: this input instead of the smallest."""
    import timm
    import torch

    from gradcam_model import GradCAMModel, export_onnx, validate
    from gradcam_model.checks.calibration import calibrate
    from gradcam_model.errors import GradCAMError
    from gradcam_model.graph.layers import list_layers

    sys.path.insert(0, str(ROOT / "tests"))
    from oracle import oracle_cam

    record: dict = {"family": family}
    started = time.perf_counter()
    _at(record, "model", started)
    try:
        name = record["model"] = smallest_model(family)
        torch.manual_seed(0)
        model = _unzeroed(timm.create_model(name, pretrained=False, num_classes=5).eval())
        default = int(model.pretrained_cfg.get("input_size", (3, 224, 224))[-1])
        size = record["input"] = size or smallest_size(model, default)
        calibrate(model, size)
        gen = torch.Generator().manual_seed(1)
        _at(record, "build", started)
        wrapper = GradCAMModel(model, "auto", example_input=torch.randn(2, 3, size, size, generator=gen))
        record["layer"] = wrapper.target_layer
        _at(record, "pytorch-grad-cam", started)
        info = next(i for i in list_layers(model, torch.zeros(1, 3, size, size)) if i.name == wrapper.target_layer)
        images = torch.randn(2, 3, size, size, generator=gen)
        with torch.no_grad():
            ours = wrapper(images)
        classes = ours[2][:, 0].tolist()
        theirs = oracle_cam(model, wrapper.target_layer, images, classes, "gradcam", oracle_reshape(info))
        record["pgc_max_diff"] = float((ours[4][:, 0] - torch.from_numpy(theirs)).abs().max())
        # a map with max == min is all zeros after normalization: agreeing on it proves nothing
        record["flat_maps"] = sum(bool(m.max() == m.min()) for m in ours[4][:, 0])
        _at(record, "export", started)
        with tempfile.TemporaryDirectory() as tmp:
            path = export_onnx(wrapper, Path(tmp) / "model.onnx")
            _at(record, "validate", started)
            report = validate(path, model)
        record["ort_max_diff"] = float(report.outputs["cam"].max_abs)
        record["validate"] = "ok" if report.ok else "; ".join(report.failures())
        wrong = record["pgc_max_diff"] > PGC_LIMIT
        record["verdict"] = "OK" if report.ok and not wrong else "FAIL"
        if record["verdict"] == "OK" and record["flat_maps"] == len(images):
            record["verdict"] = "flat"
            record["reason"] = "every map compared is all zeros: no evidence either way; try a larger --input"
        elif wrong:
            record["reason"] = f"maps differ from pytorch-grad-cam by {record['pgc_max_diff']:.2g}"
        elif not report.ok:
            record["reason"] = f"validate: {record['validate']}"
    except GradCAMError as exc:
        record["verdict"] = "refused" if record["stage"] == "build" else "FAIL"
        record["reason"] = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    except Exception as exc:  # noqa: BLE001 - the sweep records every failure and goes on
        record["verdict"] = "FAIL"
        record["reason"] = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:300]}"
    record["seconds"] = round(time.perf_counter() - started, 1)
    record["cpu_seconds"] = round(time.process_time(), 1)
    return record


def load(path: Path) -> dict[str, dict]:
    rows: dict[str, dict] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                rows[row["family"]] = row
    return rows


def _cell(value, fmt: str = "{}") -> str:
    if value is None:
        return ""
    return fmt.format(value).replace("|", "\\|")


def write_table(rows: dict[str, dict], out: Path, elapsed: str) -> None:
    import timm
    import torch

    counts: dict[str, int] = {}
    for row in rows.values():
        counts[row["verdict"]] = counts.get(row["verdict"], 0) + 1
    summary = ", ".join(f"{n} {v}" for v, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    lines = [
        "# Architectures: every timm family, smallest model",
        "",
        f"Generated by `python scripts/timm_sweep.py` ({elapsed}; timm {timm.__version__}, torch "
        f"{torch.__version__}, {platform.machine()}, {os.cpu_count()} CPU cores shared with other work). "
        "Not part of CI: rerun it after changes to the capture or the layer choice.",
        "",
        f"**{len(rows)} families: {summary}.**"
        + (
            f" {len(rows)} of timm's {len(timm.list_modules())} families were run so far; rerun the command "
            "to go on (families already in docs/architectures.jsonl are skipped)."
            if len(rows) < len(timm.list_modules())
            else ""
        ),
        "",
        "Each family's model with the fewest parameters, random weights with calibrated BatchNorm (norm "
        "weights that timm initializes to 0 set to 1, in rows run since 2026-12-07 06:40 UTC), "
        '5 classes, the smallest square input it accepts; `target_layer="auto"`. *pgc*: max |difference| '
        "between our eager map and pytorch-grad-cam's GradCAM at the same layer (its `reshape_transform` "
        "derived from the layer's output shape). *ORT*: max |difference| of the maps between the ONNX "
        "artifact under ONNX Runtime and the eager reference (`validate`). *refused*: one of our errors "
        "at build time, with its reason; *FAIL*: anything else that went wrong; *flat*: everything passed but "
        "every map compared was all zeros (the comparisons prove nothing); a family found flat at its smallest "
        "input is rerun larger with `--input`, and its row shows that size; *timeout*: over the time "
        "limit, in the stage named. *time*: wall-clock seconds after the imports; *CPU*: the process's CPU "
        "seconds, imports and every thread included (empty for rows from runs before it was recorded): where "
        "time is many times CPU, the family waited for a core.",
        "",
        "Where *layer chosen* is not a last stage, the smallest input is why: at 32 px a stride-32 CNN's last "
        "stage is 1x1, and a map of one position carries nothing, so `auto` takes the last layer with more "
        "than one position, the one before the last downsampling (test_convnext and edgenext_xx_small "
        "`stages.3.downsample.0`, test_byobnet `stages.3.0.conv1_1x1`; at 64 px and above all three take "
        "`stages`). pytorch-grad-cam's activations are kept from in-place ops after the layer "
        "(tests/oracle.py): otherwise its map at a layer followed by `ReLU(inplace=True)` (dla's `bn1`) "
        "mixes ReLU'd activations with pre-ReLU gradients.",
        "",
        "| family | model | input | layer chosen | verdict | pgc | ORT | time (s) | CPU (s) | note |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for family in sorted(rows):
        r = rows[family]
        lines.append(
            f"| {family} | {_cell(r.get('model'))} | {_cell(r.get('input'))} | {_cell(r.get('layer'))} | "
            f"{r['verdict']} | {_cell(r.get('pgc_max_diff'), '{:.1e}')} | {_cell(r.get('ort_max_diff'), '{:.1e}')} | "
            f"{_cell(r.get('seconds'))} | {_cell(r.get('cpu_seconds'))} | {_cell(r.get('reason'))} |"
        )
    out.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", help="comma-separated timm modules (default: every one not yet done)")
    parser.add_argument("--results", type=Path, default=ROOT / "docs" / "architectures.jsonl")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "architectures.md")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per family")
    parser.add_argument("--input", type=int, help="this input size for every family named, not the smallest")
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # the child process: one family, JSON on stdout
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.one, args.input)))
        return 0
    import timm

    rows = load(args.results)
    started = time.time()
    if not args.table_only:
        wanted = args.families.split(",") if args.families else [f for f in timm.list_modules() if f not in rows]
        for family in wanted:
            t0 = time.perf_counter()
            try:
                done = subprocess.run(
                    [sys.executable, __file__, "--one", family, *(["--input", str(args.input)] if args.input else [])],
                    capture_output=True,
                    text=True,
                    timeout=args.timeout,
                )
                last = (done.stdout.strip().splitlines() or [""])[-1]
                row = json.loads(last) if last.startswith("{") else None
                if row is None:
                    tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
                    row = {"family": family, "verdict": "FAIL", "reason": f"process exited {done.returncode}: {tail}"}
            except subprocess.TimeoutExpired as exc:
                row = _last_progress(exc.stderr)
                where = f" in {row['stage']}" if "stage" in row else ""
                if row.get("entered", {}).get(row.get("stage")) is not None:
                    stage = row["stage"]
                    where += f" (entered at {row['entered'][stage]} s, {row['cpu_at'][stage]} CPU s)"
                row.update(family=family, verdict="timeout", reason=f"over {args.timeout} s{where}")
            row.setdefault("seconds", round(time.perf_counter() - t0, 1))
            rows[family] = row
            with args.results.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            print(f"{family}: {row['verdict']} {row.get('layer', '')} {row.get('reason', '')}", flush=True)
            write_table(rows, args.out, f"last run {time.strftime('%Y-%m-%d', time.gmtime(started))}")
    write_table(rows, args.out, f"last run {time.strftime('%Y-%m-%d', time.gmtime(started))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
