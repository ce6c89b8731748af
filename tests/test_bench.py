"""gradcam_model.bench: one real quick run through the CLI entry, plus the pure parts.

No assertion here is about speed: timings on a shared machine mean nothing to a test.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gradcam_model.bench import cli, contestants, machine, timing
from gradcam_model.bench.configs import CONFIGS, QUICK_CONFIGS, BenchConfig, UnknownConfigError, select_configs
from gradcam_model.bench.results import CONTESTANTS, BenchResult, ConfigResult, TargetCheck, Timing
from gradcam_model.bench.timing import run_benchmark
from gradcam_model.errors import GradCAMError

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _parse(argv):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory):
    """``gradcam bench --quick --json ... --markdown ...`` once: resnet18 at 64 px, batch 2, one round."""
    out = tmp_path_factory.mktemp("bench")
    json_path, md_path = out / "bench.json", out / "docs" / "benchmarks.md"
    args = _parse(["--quick", "--json", str(json_path), "--markdown", str(md_path), "--workdir", str(out / "art")]
                  + ["--device", "cpu"])  # fmt: skip
    return {"rc": cli.run(args), "json": json.loads(json_path.read_text()), "md": md_path.read_text(), "dir": out}


def test_quick_run_exits_cleanly_and_writes_both_reports(quick_run):
    assert quick_run["rc"] == 0
    data = quick_run["json"]
    assert [c["name"] for c in data["configs"]] == [c.name for c in QUICK_CONFIGS] == ["resnet18-layer4-64-b2"]
    assert data["settings"]["quick"] is True and data["settings"]["repeats"] == 1
    assert data["settings"]["device"] == "cpu" and "gpu" not in data["machine"]
    # the artifacts were kept in --workdir: our two, and the logits-only floor
    kept = sorted(p.name for p in (quick_run["dir"] / "art").iterdir())
    assert kept == ["resnet18-layer4-64-b2.logits.onnx", "resnet18-layer4-64-b2.onnx", "resnet18-layer4-64-b2.pt"]


def test_every_contestant_has_a_finite_median(quick_run):
    (config,) = quick_run["json"]["configs"]
    assert set(config["timings_ms"]) == set(CONTESTANTS)
    for key, t in config["timings_ms"].items():
        assert math.isfinite(t["median_ms"]) and t["median_ms"] > 0, key
        assert t["runs"] == 1, key
        assert t["min_ms"] <= t["median_ms"], key


def test_ratios_are_medians_divided_side_by_side(quick_run):
    (config,) = quick_run["json"]["configs"]
    medians = {k: t["median_ms"] for k, t in config["timings_ms"].items()}
    assert config["ratio_to_ort_logits"]["ort_logits"] == 1.0
    assert config["ort_gradcam_speedup_over"]["ort_gradcam"] == 1.0
    for key in CONTESTANTS:
        assert config["ratio_to_ort_logits"][key] == pytest.approx(medians[key] / medians["ort_logits"], rel=1e-12)
        assert config["ort_gradcam_speedup_over"][key] == pytest.approx(
            medians[key] / medians["ort_gradcam"], rel=1e-12
        )


def test_every_map_agrees_with_the_reference(quick_run):
    """The contestants compute the same maps, so the timings compare the same work."""
    (config,) = quick_run["json"]["configs"]
    diffs = config["max_abs_cam_diff_vs_reference"]
    assert set(diffs) == {"gradcam_eager", "ort_gradcam", "torchscript", "pytorch_grad_cam", "captum"}
    # maps are in [0, 1]; 1e-4 leaves room for float32 ORT kernels and cv2's resize in pytorch-grad-cam
    for key, diff in diffs.items():
        assert diff < 1e-4, (key, diff)


def test_exports_sizes_and_memory_are_recorded(quick_run):
    (config,) = quick_run["json"]["configs"]
    assert set(config["export_s"]) == set(config["artifact_bytes"]) == {"onnx", "torchscript", "onnx_logits"}
    assert all(v > 0 for v in config["export_s"].values()) and config["build_s"] > 0 and config["validate_s"] > 0
    assert config["validation"] == "ok"  # the quick run's resnet18 artifact passes validate plainly
    export = config["export_s"]
    assert config["export_ratio"] == pytest.approx((config["build_s"] + export["onnx"]) / export["onnx_logits"])
    [target] = [t for t in config["targets"] if t["description"].startswith("(build + ONNX export)")]
    assert (target["value"], target["bound"], target["met"]) == (config["export_ratio"], 3.0, target["value"] <= 3.0)
    # resnet18 holds ~45 MB of float32 weights: every artifact carries them
    assert all(v > 40e6 for v in config["artifact_bytes"].values())
    memory = config["ort_memory_mb"]
    assert set(memory) == {"ort_gradcam", "ort_logits"}
    for figures in memory.values():
        # the session holds the weights, so the high-water mark grows by at least their size
        assert figures["peak_mb"] >= figures["load_mb"] > 40


def test_memory_probe_runs_as_a_module_without_torch(quick_run):
    """``python -m gradcam_model.bench.memory`` in a fresh interpreter: figures as JSON, torch never imported."""
    path = quick_run["dir"] / "art" / "resnet18-layer4-64-b2.logits.onnx"
    argument = json.dumps([str(path), [1, 3, 64, 64], 1, False, 1])
    code = (
        "import runpy, sys; sys.argv = ['memory', sys.argv[1]]; "
        "runpy.run_module('gradcam_model.bench.memory', run_name='__main__'); print('torch' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    done = subprocess.run([sys.executable, "-c", code, argument], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    figures, torch_loaded = done.stdout.strip().splitlines()
    assert torch_loaded == "False"
    assert json.loads(figures)["peak_mb"] >= json.loads(figures)["load_mb"] > 40


def test_memory_figures_are_medians_over_fresh_processes(quick_run, monkeypatch):
    """Each figure is the median over ``probes`` processes, figure by figure (one process's varies by ~100 MB)."""
    from gradcam_model.bench import memory

    draws = iter(
        [{"load_mb": 5.0, "peak_mb": 9.0}, {"load_mb": 1.0, "peak_mb": 30.0}, {"load_mb": 3.0, "peak_mb": 7.0}]
    )
    launched = []

    def fake_run(command, **kwargs):
        launched.append(command)
        return subprocess.CompletedProcess(command, 0, json.dumps(next(draws)) + "\n", "")

    monkeypatch.setattr(memory.subprocess, "run", fake_run)
    figures = memory.measure(Path("m.onnx"), [1, 3, 8, 8], 1, False, 1, probes=3)
    assert figures == {"load_mb": 3.0, "peak_mb": 9.0} and len(launched) == 3
    assert quick_run["json"]["settings"]["memory_probes"] == 1  # the quick run: one process each


def test_markdown_has_machine_and_one_row_per_contestant(quick_run):
    md, machine = quick_run["md"], quick_run["json"]["machine"]
    assert md.startswith("# Benchmarks")
    assert f"CPU: {machine['cpu']}" in md and f"threads: {machine['threads']}" in md
    assert "torch 2." in md and "captum" in md and "grad-cam" in md
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    for label in CONTESTANTS.values():
        assert sum(row.startswith(f"| {label} |") for row in rows) == 1, label
    (config,) = quick_run["json"]["configs"]
    assert "## Export time and size" in md and f"| {config['export_ratio']:.2f}x |" in md
    # summary, the export-time target, export and size, memory
    assert sum(row.startswith("| resnet18-layer4-64-b2 |") for row in rows) == 4


def test_terminal_table_lists_every_contestant(quick_run):
    (config,) = quick_run["json"]["configs"]
    # the run printed before this test's capture started, so rebuild the table from a result
    result = BenchResult(
        quick_run["json"]["machine"],
        quick_run["json"]["settings"],
        [_config_result(QUICK_CONFIGS[0], {k: t["median_ms"] for k, t in config["timings_ms"].items()})],
    )
    table = result.to_table()
    for label in CONTESTANTS.values():
        assert label in table


def _config_result(config: BenchConfig, medians: dict[str, float]) -> ConfigResult:
    timings = {k: Timing(m, m, m, m, 1) for k, m in medians.items()}
    return ConfigResult(
        config,
        timings,
        build_s=1.0,
        export_s={"onnx": 1.0, "torchscript": 1.0, "onnx_logits": 1.0},
        artifact_bytes={"onnx": 1, "torchscript": 1, "onnx_logits": 1},
        validate_s=1.0,
    )


def test_targets_are_checked_against_the_bounds():
    config = BenchConfig(
        "resnet50", "layer4", 224, 8, max_overhead=1.10, min_speedups=(("pytorch_grad_cam", 4.0), ("captum", 2.5))
    )
    medians = dict.fromkeys(CONTESTANTS, 100.0)
    medians.update(ort_logits=100.0, ort_gradcam=105.0, pytorch_grad_cam=500.0, captum=200.0)
    checks = _config_result(config, medians).targets()
    result = _config_result(config, medians)
    result.build_s, result.export_s["onnx"], result.export_s["onnx_logits"] = 4.0, 11.0, 5.0
    checks = result.targets()
    assert [(c.description.split(" / ")[0], c.met) for c in checks] == [
        ("ORT Grad-CAM", True),  # 1.05 <= 1.10
        ("pytorch-grad-cam GradCAM", True),  # 500/105 = 4.76 >= 4
        ("Captum LayerGradCam + interpolate", False),  # 200/105 = 1.90 < 2.5
        ("(build + ONNX export)", True),  # (4 + 11) / 5 = 3.0 <= 3 (the default bound)
    ]
    assert checks[0].value == pytest.approx(1.05)
    assert checks[2].value == pytest.approx(200 / 105)
    assert checks[3].value == pytest.approx(3.0) and checks[3].bound == 3.0
    result.export_s["onnx"] = 12.0  # (4 + 12) / 5 = 3.2
    assert not result.targets()[3].met


@pytest.mark.parametrize(
    ("value", "bound", "kind", "met"),
    [(1.10, 1.10, "max", True), (1.11, 1.10, "max", False), (4.0, 4.0, "min", True), (3.9, 4.0, "min", False)],
)
def test_target_check_bounds_are_inclusive(value, bound, kind, met):
    assert TargetCheck("c", "d", value, bound, kind).met is met


def test_timing_summarizes_samples_in_milliseconds():
    t = Timing.from_seconds([0.004, 0.001, 0.003, 0.002, 0.005])
    assert (t.median_ms, t.min_ms, t.runs) == (pytest.approx(3.0), pytest.approx(1.0), 5)
    assert t.q1_ms == pytest.approx(2.0) and t.q3_ms == pytest.approx(4.0)
    single = Timing.from_seconds([0.01])
    assert single.median_ms == single.q1_ms == single.q3_ms == pytest.approx(10.0)


def test_configurations_are_the_documented_set():
    """docs/benchmarks.md reports exactly the configurations a full run measures."""
    names = [c.name for c in CONFIGS]
    assert len(set(names)) == len(names)
    summary = (DOCS / "benchmarks.md").read_text().split("## Summary", 1)[1].split("\n## ", 1)[0]
    documented = [line.split("|")[1].strip() for line in summary.splitlines() if line.startswith("| ")][1:]
    assert documented == names


def test_select_configs_by_name_pattern_and_quick():
    assert select_configs(None) == list(CONFIGS)
    assert select_configs(None, quick=True) == list(QUICK_CONFIGS)
    assert [c.name for c in select_configs(["resnet50-*"])] == [
        "resnet50-layer4-224-b1",
        "resnet50-layer4-224-b8",
        "resnet50-layer3-224-b8",
    ]
    # a name given twice (or matched by two patterns) runs once
    assert len(select_configs(["vgg19-features-128-b8", "vgg19-*"])) == 1
    (quick,) = select_configs(["mobilenet_v3_large-features.12-224-b8"], quick=True)
    assert (quick.arch, quick.layer, quick.size, quick.batch) == ("mobilenet_v3_large", "features.12", 64, 2)
    assert quick.name == "mobilenet_v3_large-features.12-64-b2"


@pytest.mark.parametrize(
    ("names", "match"),
    [
        (["resnet50-layer4-224-b2"], "Did you mean 'resnet50-layer4-224-b8', 'resnet50-layer4-224-b1'"),
        (["nope"], "no benchmark configuration matches 'nope'"),
        (["vgg19-*", "densenet*"], "'densenet\\*'"),
    ],
)
def test_unknown_config_names_the_bad_value(names, match):
    with pytest.raises(UnknownConfigError, match=match) as info:
        select_configs(names)
    assert isinstance(info.value, GradCAMError)  # the CLI prints it as one line


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"repeats": 0}, "repeats must be an int >= 1"),
        ({"threads": 0}, "threads must be an int >= 1"),
        ({"warmup": -1}, "warmup must be an int >= 0"),
        ({"memory_runs": 1.5}, "memory_runs must be an int >= 0"),
        ({"configs": []}, "no configuration"),
    ],
)
def test_run_benchmark_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        run_benchmark(**{"configs": list(QUICK_CONFIGS), **kwargs})


def test_cli_defaults():
    args = _parse([])
    assert args.config is None and not args.quick and not args.ort_spinning and not args.check_targets
    assert args.repeats is None and args.threads is None and args.json is None and args.markdown is None
    assert _parse(["--config", "a", "--config", "b"]).config == ["a", "b"]


@pytest.mark.parametrize(
    "argv", [["--repeats", "0"], ["--threads", "0"], ["--warmup", "-1"], ["--memory-runs", "x"], ["--repeats", "1.5"]]
)
def test_cli_rejects_bad_numbers_before_running(argv, capsys):
    with pytest.raises(SystemExit) as info:
        _parse(argv)
    assert info.value.code == 2
    assert "expected an integer" in capsys.readouterr().err


def test_each_timed_call_ends_with_synchronize():
    events = []
    runners = {"a": lambda: events.append("a") or 1, "b": lambda: events.append("b") or 2}
    samples, outputs = timing.time_interleaved(runners, warmup=1, repeats=3, synchronize=lambda: events.append("sync"))
    assert outputs == {"a": 1, "b": 2} and [len(v) for v in samples.values()] == [3, 3]
    # warm-up: both, one sync; then every timed call is followed by its own sync
    assert events[:3] == ["a", "b", "sync"]
    timed = events[3:]
    assert timed[1::2] == ["sync"] * 6 and sorted(timed[0::2]) == ["a"] * 3 + ["b"] * 3


def test_maps_from_ort_values_are_squeezed():
    class FakeOrtValue:  # what ONNX Runtime returns from an IO binding
        def numpy(self):
            return np.arange(8, dtype=np.float32).reshape(2, 1, 2, 2)

    got = contestants.as_map(FakeOrtValue())
    assert got.shape == (2, 2, 2) and got.dtype == np.float64 and got[1, 1, 1] == 7


def test_device_resolution(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert machine.resolve_device("auto") == machine.resolve_device(None) == torch.device("cpu")
    assert machine.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(GradCAMError, match="torch sees no CUDA GPU; use --device cpu"):
        machine.resolve_device("cuda")
    with pytest.raises(ValueError, match="device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'mps'"):
        machine.resolve_device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert machine.resolve_device("auto") == torch.device("cuda", 0)
    assert machine.resolve_device("cuda") == torch.device("cuda", 0)
    with pytest.raises(GradCAMError, match="sees 1 GPU"):
        machine.resolve_device("cuda:3")


def test_cli_device_errors(monkeypatch, capsys):
    from gradcam_model.cli import main

    with pytest.raises(SystemExit) as info:
        _parse(["--device", "tpu"])
    assert info.value.code == 2 and "expected auto, cpu, cuda or cuda:N, got 'tpu'" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["bench", "--quick", "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "gradcam: error: device 'cuda' asked for, but torch sees no CUDA GPU; use --device cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal of a CPU fallback on a machine with no GPU")
def test_ort_cuda_session_refuses_a_silent_cpu_fallback(quick_run):
    """onnxruntime-gpu lists its CUDA provider even where it cannot start; CPU figures
    must not be reported as GPU ones."""
    path = quick_run["dir"] / "art" / "resnet18-layer4-64-b2.onnx"
    with pytest.raises(GradCAMError, match="could not start its CUDA provider for resnet18-layer4-64-b2.onnx"):
        contestants.ort_session(path, 1, False, torch.device("cuda", 0))


def test_bound_ort_runner_matches_a_plain_run(quick_run):
    """The IO-binding path the GPU run takes, exercised on the CPU: same outputs as ``run``."""
    path = quick_run["dir"] / "art" / "resnet18-layer4-64-b2.onnx"
    session = contestants.ort_session(path, 1, False, torch.device("cpu"))
    image = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    plain = contestants.ort_runner(session, image, 4)()
    bound = contestants.ort_runner(session, image, 4, bind=True)()
    assert plain.shape == (3, 1, 64, 64) and plain.max() == 1.0
    np.testing.assert_array_equal(contestants.as_map(bound), contestants.as_map(plain))
    logits = contestants.ort_runner(session, image, 0, bind=True)().numpy()
    np.testing.assert_array_equal(logits, session.run(None, {"image": image.numpy()})[0])
