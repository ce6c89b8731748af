"""gradcam bench --methods: every method's artifact timed against the logits-only model in one run."""

from __future__ import annotations

import re

import torch

from gradcam_model.bench import configs
from gradcam_model.bench.methods import BEGIN, END, run_methods_bench
from gradcam_model.cli import main


def test_cli_run_writes_its_table_and_section(tmp_path, capsys):
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# Benchmarks\n\n{BEGIN}\nold\n{END}\n")
    argv = ["bench", "--methods", "--config", "resnet18-layer4-64-b2", "--only", "gradcam,eigencam",
            "--repeats", "2", "--warmup", "1", "--threads", "1", "--markdown", str(doc)]  # fmt: skip
    threads = torch.get_num_threads()
    assert main(argv) == 0
    assert torch.get_num_threads() == threads  # --threads 1 was for the run: this process keeps its own
    out = capsys.readouterr().out
    row = re.compile(r"^\| `(\S+)` \| (yes|no) \| ([\d.]+) \| ([\d.]+) \|", re.M)
    rows = {m.group(1): m.groups() for m in row.finditer(out)}
    assert set(rows) == {"gradcam", "eigencam"}
    assert rows["gradcam"][1] == "yes" and rows["eigencam"][1] == "no"  # eigencam needs no backward pass
    assert all(float(r[3]) > 0 for r in rows.values())
    text = doc.read_text()
    assert "old" not in text and "## Cost of each method" in text and "| logits only (no map) | no |" in text


def test_a_method_the_layer_cannot_carry_is_listed_as_refused(tmp_path, monkeypatch):
    layer3 = configs.BenchConfig("resnet18", "layer3", 64, 2, num_classes=10)
    monkeypatch.setattr(configs, "QUICK_CONFIGS", (*configs.QUICK_CONFIGS, layer3))
    result = run_methods_bench(layer3.name, ["cam", "gradcam"], tmp_path, repeats=1, warmup=1, threads=1)
    cam, gradcam = result.rows
    assert cam.median_ms is None and "cam" in cam.refused and len(cam.refused.splitlines()) == 1
    assert not gradcam.refused and gradcam.ratio > 0 and result.logits_ms > 0
    assert "| `cam` | yes | refused: " in result.table()


def test_bad_names_are_one_line_and_exit_2_before_any_export(capsys):
    assert main(["bench", "--methods", "--only", "gradcam,nosuch", "--config", "resnet18-layer4-64-b2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown method 'nosuch'" in err
    assert main(["bench", "--methods", "--only", "gradcam", "--config", "resnet50-*"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--config names one configuration; 'resnet50-*' matches 3" in err
