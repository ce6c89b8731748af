"""gradcam bench --serve: one small run against a real server, its table, and its section of docs/benchmarks.md."""

from __future__ import annotations

from gradcam_model import export_onnx
from gradcam_model.bench.report import marked_sections, update_section
from gradcam_model.bench.sections import generate_jpegs
from gradcam_model.bench.serve import BEGIN, END, markdown, run_serve_bench
from gradcam_model.cli import main


def test_small_run_and_markdown_section(resnet18_layer4, tmp_path):
    artifact = export_onnx(resnet18_layer4, tmp_path / "small.onnx")
    images = generate_jpegs(tmp_path / "images", 3, (64, 64))
    seen: list[int] = []

    def other_server(indices: list[int]) -> tuple[list[float], float]:  # scripts/bench_triton.py's hook
        seen.extend(indices)
        return [0.001] * len(indices), 0.001 * len(indices)

    extra = [("another server", 16, other_server)]
    result = run_serve_bench(artifact, images, tmp_path, requests=6, levels=(1, 2), output="map_png", threads=1,
                             rounds=2, ort_spinning=True, extra=extra)  # fmt: skip
    assert [(t.what, t.concurrency, t.requests) for t in result.timings] == [
        ("in-process explainer (preprocessed, batch 1)", 1, 6),
        ("in-process explainer, idle threads asleep", 1, 6),
        ("in-process :explain work, no HTTP", 1, 6),
        ("HTTP v2 binary tensor", 1, 6),
        ("HTTP :explain, compact map", 1, 6),
        ("HTTP :explain, JPEG overlay", 1, 6),
        ("HTTP :explain, JPEG overlay", 2, 6),
        ("another server", 16, 6),
        ("explain_files (JPEG overlays, CSV, grid)", 1, 6),
    ]
    assert seen == list(range(6))  # in the same interleaved rounds, each request once
    assert result.timings[-2].p50_ms == 1.0
    assert all(0 < t.p50_ms <= t.p99_ms for t in result.timings)
    assert result.base.p50_ms == min(t.p50_ms for t in result.timings[:2])  # the faster bare call
    gap = result.timings[3].p50_ms - result.base.p50_ms
    assert f"p50 at concurrency 1 is {gap:+.1f} ms over the bare in-process call" in result.targets()[0]
    targets = result.targets()
    assert targets[0].startswith("HTTP v2 binary tensor: ") and "(target <= 3 ms)" in targets[0]
    assert targets[1].startswith("HTTP :explain, compact map: ") and "(target <= 5 ms)" in targets[1]
    assert targets[2].startswith("HTTP :explain, JPEG overlay at concurrency 2: ") and "(target >= 0.8x)" in targets[2]
    assert all(line.endswith(("met", "missed")) for line in targets)
    # the server ran as asked (gradcam serve --ort-spinning), and the section says so
    assert "ONNX Runtime runs it on CPUExecutionProvider (idle threads spin)" in (tmp_path / "server.log").read_text()
    assert "ONNX Runtime's idle threads spinning (`--ort-spinning`)" in markdown(result, 6)
    assert len(list((tmp_path / "explain_files" / "overlays").iterdir())) == 3  # explain_files ran for real
    assert "Finished server process" in (tmp_path / "server.log").read_text()  # stopped by SIGTERM
    text = markdown(result, 6)
    assert text.startswith(BEGIN) and text.endswith(END) and "p50 ms" in text and "load average" in text

    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# Benchmarks\n\nkept\n\n{BEGIN}\nold\n{END}\n\ntail kept\n")
    update_section(doc, text)
    assert "old" not in doc.read_text() and doc.read_text().endswith("\ntail kept\n")
    assert marked_sections(doc) == [text]


def test_cli_help_is_the_serve_bench_parser(capsys):
    assert main(["bench", "--serve", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: gradcam bench --serve") and "--requests N" in out
