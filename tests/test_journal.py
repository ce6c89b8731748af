"""Interrupted explain runs (runtime/journal.py): SIGTERM keeps what finished, --resume ends as an uninterrupted run.

Runs are stopped through the real signal path: the process sends itself SIGTERM after a given
number of finished rows (``GRADCAM_SIGTERM_AFTER_ROWS``, at several points), and one run is
killed from outside while it works. The resumed outputs are compared byte for byte (CSV,
overlays, maps) and pixel for pixel (grid.png) with one uninterrupted run.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from gradcam_model.cli import main
from gradcam_model.runtime.journal import PARTIAL_CSV, SIGTERM_AFTER_ENV, STATE_DIR

IMAGES = 13
FLAGS = ["--batch-size", "3", "--save-maps", "--workers", "2"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """13 JPEGs in two class folders (one corrupt: a failure row must survive resume too)."""
    folder = tmp_path_factory.mktemp("journal") / "in"
    rng = np.random.default_rng(11)
    for i in range(IMAGES):
        sub = folder / ("cat" if i % 2 else "dog")
        sub.mkdir(parents=True, exist_ok=True)
        picture = cv2.resize(rng.integers(0, 256, (3, 4, 3), dtype=np.uint8), (80, 64), interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(sub / f"p{i:02d}.jpg"), picture)
    (folder / "dog" / "p04.jpg").write_bytes(b"not a picture")
    return folder


def _explain(artifact, photos, out, *extra, env: dict | None = None, capsys=None) -> tuple[int, str, str]:
    old = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        code = main(["explain", str(artifact), str(photos), "--out", str(out), *FLAGS, *extra])
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    out_text, err = capsys.readouterr() if capsys else ("", "")
    return code, out_text, err


def _relative_rows(out: Path, name: str = "predictions.csv") -> list[dict]:
    with open(out / name, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["overlay"] = ";".join(str(Path(p).relative_to(out)) for p in row["overlay"].split(";") if p)
    return rows


def _files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def uninterrupted(artifacts, photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "out"
    assert main(["explain", str(artifacts["dynamic.onnx"]), str(photos), "--out", str(out), *FLAGS]) == 1
    return out


def _same_outputs(out: Path, reference: Path) -> None:
    assert _relative_rows(out) == _relative_rows(reference)
    got, want = _files(out), _files(reference)
    assert sorted(got) == sorted(want)  # no journal, no state, no temporaries left
    for name in want:
        if name == "grid.png":  # PNG metadata aside, the pixels
            np.testing.assert_array_equal(cv2.imread(str(out / name)), cv2.imread(str(reference / name)))
        elif name != "predictions.csv":  # its overlay column names the folder
            assert got[name] == want[name], name


@pytest.mark.parametrize("after", [1, 5, 11])
def test_sigterm_keeps_finished_rows_and_resume_ends_as_an_uninterrupted_run(
    artifacts, photos, uninterrupted, tmp_path, capsys, after
):
    out = tmp_path / "out"
    artifact = artifacts["dynamic.onnx"]
    code, stdout, err = _explain(artifact, photos, out, env={SIGTERM_AFTER_ENV: str(after)}, capsys=capsys)
    assert code == 143 and stdout == ""
    lines = err.strip().splitlines()
    assert lines[-1] == "gradcam: terminated"
    kept = -(-after // 3) * 3  # whole batches of 3 are journaled
    assert lines[-2] == (
        f"gradcam: stopped with {kept} images done (their overlays, and their rows in {out / PARTIAL_CSV}); "
        "add --resume to the same command to continue"
    )
    assert not (out / "predictions.csv").exists() and not (out / "grid.png").exists()
    partial = _relative_rows(out, PARTIAL_CSV)
    whole = _relative_rows(uninterrupted)
    assert len(partial) == kept
    for row in partial:  # each kept row is the uninterrupted run's row, its overlays on disk
        index = int(row.pop("index"))
        assert row == whole[index]
        assert all((out / p).is_file() for p in row["overlay"].split(";") if p)

    code, stdout, err = _explain(artifact, photos, out, "--resume", capsys=capsys)
    assert code == 1  # the corrupt picture, as in the uninterrupted run
    assert f"explained 12 of 13 images ({kept} done by the interrupted run)" in stdout
    _same_outputs(out, uninterrupted)


def test_a_run_killed_from_outside_resumes(artifacts, photos, tmp_path):
    """A real SIGTERM from another process while the run works, then --resume in a new process."""
    out, reference = tmp_path / "out", tmp_path / "reference"
    argv = ["explain", str(artifacts["dynamic.onnx"]), str(photos), *FLAGS, "--batch-size", "1"]  # one per batch
    assert main([*argv, "--out", str(reference)]) == 1
    command = [sys.executable, "-m", "gradcam_model", *argv, "--out", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        journal = out / PARTIAL_CSV
        if journal.exists() and journal.read_text().count("\n") >= 3:  # the header and two rows
            break
        time.sleep(0.005)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    if process.returncode == 1:  # the whole run beat the signal on this machine: nothing to resume
        pytest.skip("the run finished before the signal arrived")
    assert process.returncode == 143, err
    assert "add --resume to the same command to continue" in err and "Traceback" not in err
    done = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    _same_outputs(out, reference)


def test_one_rule_for_an_earlier_run_in_out(artifacts, photos, uninterrupted, tmp_path, capsys):
    out = tmp_path / "out"
    artifact = artifacts["dynamic.onnx"]
    assert _explain(artifact, photos, out, capsys=capsys)[0] == 1
    code, stdout, err = _explain(artifact, photos, out, capsys=capsys)
    assert (code, stdout) == (2, "")
    assert err == (
        f"gradcam: error: {out} already holds predictions.csv from an earlier run; pass --overwrite to replace "
        "its outputs or choose another output folder\n"
    )
    code, _, err = _explain(artifact, photos, out, "--resume", capsys=capsys)
    assert code == 2
    assert err == (
        f"gradcam: error: nothing to resume in {out}: no interrupted run there (predictions.csv is from a "
        "finished run)\n"
    )
    assert _explain(artifact, photos, out, "--overwrite", capsys=capsys)[0] == 1
    _same_outputs(out, uninterrupted)


def test_resume_refuses_other_options_or_another_artifact(artifacts, photos, tmp_path, capsys):
    out = tmp_path / "out"
    artifact = artifacts["dynamic.onnx"]
    assert _explain(artifact, photos, out, env={SIGTERM_AFTER_ENV: "2"}, capsys=capsys)[0] == 143
    code, _, err = _explain(artifact, photos, out, capsys=capsys)
    assert code == 2 and err == (
        f"gradcam: error: {out} already holds an interrupted run; pass --overwrite to replace its outputs, "
        "--resume to continue it, or choose another output folder\n"
    )
    cases = [
        (artifact, ["--alpha", "0.5"], "alpha"),
        (artifact, ["--overlay-format", "png", "--no-save-maps"], "overlay format and save maps"),
        (artifacts["static.onnx"], [], "artifact"),
    ]
    for path, extra, named in cases:
        argv = [a for a in extra if a != "--no-save-maps"]
        old_flags = list(FLAGS)
        if "--no-save-maps" in extra:
            FLAGS.remove("--save-maps")
        try:
            code, _, err = _explain(path, photos, out, "--resume", *argv, capsys=capsys)
        finally:
            FLAGS[:] = old_flags
        assert code == 2 and err == (
            f"gradcam: error: cannot resume the run in {out}: the interrupted run had another {named}; rerun it "
            "as it was, or start again with --overwrite\n"
        )
    assert len(_relative_rows(out, PARTIAL_CSV)) == 3 and (out / STATE_DIR).is_dir()  # refusals change nothing


def test_a_row_cut_short_by_the_signal_is_redone(artifacts, photos, uninterrupted, tmp_path, capsys):
    out = tmp_path / "out"
    artifact = artifacts["dynamic.onnx"]
    assert _explain(artifact, photos, out, env={SIGTERM_AFTER_ENV: "3"}, capsys=capsys)[0] == 143
    journal = out / PARTIAL_CSV
    with open(journal, "a") as f:
        f.write("3,in/dog/p06.jpg,dog,1")  # a torn row: no newline
    assert _explain(artifact, photos, out, "--resume", capsys=capsys)[0] == 1
    _same_outputs(out, uninterrupted)
