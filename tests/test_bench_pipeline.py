"""gradcam bench --pipeline: one small run, its table, and its section of docs/benchmarks.md."""

from __future__ import annotations

from gradcam_model.bench.pipeline import BEGIN, END, markdown, run_pipeline_bench
from gradcam_model.bench.report import update_section
from gradcam_model.bench.sections import generate_jpegs
from gradcam_model.cli import main


def test_small_run_and_markdown_section(artifacts, tmp_path):
    images = generate_jpegs(tmp_path / "images", 6, (80, 60))
    result = run_pipeline_bench(artifacts["static.onnx"], images, tmp_path, batch_size=4, cli=False, size=(80, 60))
    assert result.images == 6 and result.provider == "CPUExecutionProvider"
    assert 0 < result.compute_s and 0 < result.loop_s and 0 < result.pipeline_s
    assert (tmp_path / "out-library" / "predictions.csv").read_text().count("\n") == 7  # header + 6 rows
    section = markdown(result)
    assert section.startswith(BEGIN) and section.endswith(END) and "x compute" in section

    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# Benchmarks\n\nkept\n\n{BEGIN}\nold\n{END}\n\ntail kept\n")
    update_section(doc, section)
    text = doc.read_text()
    assert "old" not in text and text.count(BEGIN) == 1
    assert text.startswith("# Benchmarks\n\nkept\n") and text.endswith("\ntail kept\n")


def test_cli_help_is_the_pipeline_parser(capsys):
    assert main(["bench", "--pipeline", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: gradcam bench --pipeline") and "--artifact FILE" in out
