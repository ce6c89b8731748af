"""The atomic writer: file modes under the umask, SIGTERM and SIGKILL mid-write, stale temporaries."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gradcam_model import _atomic
from gradcam_model._atomic import remove_stale_temporaries, write_bytes_atomic

ROOT = Path(__file__).resolve().parent.parent


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(("umask", "expected"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
@pytest.mark.parametrize("anonymous", [True, False], ids=["o_tmpfile", "named-temporary"])
def test_written_files_get_the_umask_mode(tmp_path, monkeypatch, umask, expected, anonymous):
    monkeypatch.setattr(_atomic, "_link_works", anonymous)
    old = os.umask(umask)
    try:
        write_bytes_atomic(tmp_path / "new.bin", b"abc", overwrite=False)
        (tmp_path / "old.bin").write_bytes(b"old")
        write_bytes_atomic(tmp_path / "old.bin", b"new", overwrite=True)
    finally:
        os.umask(old)
    assert _mode(tmp_path / "new.bin") == expected
    assert _mode(tmp_path / "old.bin") == expected
    assert (tmp_path / "old.bin").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.bin", "old.bin"]


def test_exported_artifacts_are_readable_by_others(artifacts):
    umask = os.umask(0)
    os.umask(umask)
    for key in ("static.onnx", "static.pt"):
        assert _mode(Path(artifacts[key])) == 0o666 & ~umask, key  # was 0600 (mkstemp)


# A child that writes through the named-temporary path and stops half-way, so that a
# signal lands while the temporary file exists.
_CHILD = textwrap.dedent(
    """
    import os, signal, sys, time
    # start as a process launched from a shell would: a test worker's ignored or blocked
    # SIGTERM/SIGINT (inherited across exec) would otherwise leave the signal undelivered
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {{signal.SIGTERM, signal.SIGINT}})
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.path.insert(0, {root!r})
    from gradcam_model import _atomic
    _atomic._link_works = False
    real_write = _atomic._write_all
    def stalled(fd, data):
        os.write(fd, bytes(data[: len(data) // 2]))
        print("writing", flush=True)
        time.sleep({stall})
    _atomic._write_all = stalled
    {call}
    """
)


def _run_child(call: str, sig: int, cwd: Path, stall: float = 60) -> subprocess.CompletedProcess:
    code = _CHILD.format(root=str(ROOT), call=call, stall=stall)
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd
    )
    try:
        lines = []
        while not lines or lines[-1] != "writing":  # the CLI prints its own lines first
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            lines.append(line.strip())
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_sigterm_mid_write_leaves_only_the_older_file(tmp_path):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"old artifact")
    call = f"_atomic.write_bytes_atomic({str(target)!r}, b'x' * 1_000_000, overwrite=True)"
    done = _run_child(call, signal.SIGTERM, tmp_path)
    assert done.returncode == -signal.SIGTERM  # still dies of the signal, after cleaning up
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
    assert target.read_bytes() == b"old artifact"


def test_sigterm_during_gradcam_explain_exits_143_without_temporaries(artifacts, tmp_path):
    import cv2
    import numpy as np

    photos = tmp_path / "photos"
    photos.mkdir()
    cv2.imwrite(str(photos / "a.png"), np.full((64, 64, 3), 128, np.uint8))
    out = tmp_path / "out"
    call = (
        "from gradcam_model.cli import main; "
        f"sys.exit(main(['explain', {str(artifacts['static.onnx'])!r}, {str(photos)!r}, '--out', {str(out)!r}]))"
    )
    # the overlay is written on a worker thread: the main thread unwinds, the write in flight completes
    done = _run_child(call, signal.SIGTERM, tmp_path, stall=2)
    assert done.returncode == 143, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "gradcam: terminated"
    left = [p for p in out.rglob("*") if p.is_file()]
    assert not [p for p in left if p.name.endswith(".tmp")], left


def test_sigkill_leaves_a_temporary_that_the_next_write_removes(tmp_path):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"old artifact")
    call = f"_atomic.write_bytes_atomic({str(target)!r}, b'x' * 1_000_000, overwrite=True)"
    done = _run_child(call, signal.SIGKILL, tmp_path)
    assert done.returncode == -signal.SIGKILL
    stale = [p for p in tmp_path.iterdir() if p.name != "model.onnx"]
    assert len(stale) == 1 and stale[0].name.startswith(".model.onnx.") and stale[0].name.endswith(".tmp")
    assert target.read_bytes() == b"old artifact"
    # an unrelated file and a live writer's temporary are left alone
    live = tmp_path / f".model.onnx.{os.getppid()}-abcdef01.tmp"
    live.write_bytes(b"in progress")
    other = tmp_path / ".other.onnx.999999-abcdef01.tmp"
    other.write_bytes(b"another target")
    write_bytes_atomic(target, b"new artifact", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["model.onnx", live.name, other.name])
    assert target.read_bytes() == b"new artifact"
    assert remove_stale_temporaries(target) == []


def test_sigterm_during_gradcam_export_exits_143_without_temporaries(tmp_path):
    """The issue's case: `docker stop` while `gradcam export` writes the artifact."""
    out = tmp_path / "artifacts"
    argv = ["export", "--arch", "resnet18", "--num-classes", "3", "--input-size", "32", "32"]
    argv += ["--target-layer", "layer4", "--format", "onnx", "--out", str(out)]
    call = f"from gradcam_model.cli import main; sys.exit(main({argv!r}))"
    done = _run_child(call, signal.SIGTERM, tmp_path)
    assert done.returncode == 143, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "gradcam: terminated"
    assert list(out.iterdir()) == []  # neither the half-written temporary nor a partial artifact
