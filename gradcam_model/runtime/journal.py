"""Explain runs that survive interruption: finished rows are kept, and ``resume`` continues a run.

While a run works, ``OUT/predictions.partial.csv`` receives each finished image's row (the
columns of ``predictions.csv`` after an ``index`` column: the image's place in the input
order), after its overlays (and maps) were written; ``OUT/.gradcam-run/`` holds the run's
record (artifact hash and the options that decide the outputs) and the lossless grid
thumbnails of the images done. A run that ends normally writes ``predictions.csv`` and
``grid.png`` and removes both. A run stopped by SIGTERM or Ctrl-C leaves them: its overlays
and rows are there, and a rerun with ``resume`` checks that the artifact and the options
match, skips the images done, and ends with the outputs an uninterrupted run writes.

Every file except the journal is written atomically (temporary + rename); the journal is
append-only, and a row cut short by the signal is dropped when the run resumes.

One rule for an output folder, both engines: a folder that holds ``predictions.csv``,
``predictions.parquet`` or an interrupted run is refused unless ``overwrite`` (start
again) or ``resume`` (continue the interrupted run).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import shutil
import signal
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .._atomic import write_bytes_atomic
from ..errors import InputError, OutputExistsError
from .outputs import CSV_FIELDS, REGION_FIELDS, Prediction

__all__ = [
    "FINISHED_FILES",
    "PARTIAL_CSV",
    "SIGTERM_AFTER_ENV",
    "STATE_DIR",
    "Journal",
    "artifact_digest",
    "partial_rows",
]

PARTIAL_CSV = "predictions.partial.csv"
STATE_DIR = ".gradcam-run"
FINISHED_FILES = ("predictions.csv", "predictions.parquet")  # their presence marks a finished run
_RECORD = "run.json"
# Fault injection for tests and drills: the process sends itself SIGTERM once it has journaled at least this many rows
SIGTERM_AFTER_ENV = "GRADCAM_SIGTERM_AFTER_ROWS"
_FIELDS = ("index", *CSV_FIELDS)


def artifact_digest(path: str | os.PathLike) -> str:
    """SHA-256 of the artifact file: a resumed run must use the same bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _prediction(row: dict[str, str]) -> Prediction:
    """A journal row back to a :class:`Prediction` (floats as predictions.csv writes them)."""
    path, label = Path(row["path"]), row["true_label"] or None
    if row["error"]:
        return Prediction(path, label, error=row["error"])
    indices = tuple(int(c) for c in row["explained_index"].split(";"))
    labels = (row["explained_label"],) if len(indices) == 1 else tuple(row["explained_label"].split(";"))
    return Prediction(
        path,
        label,
        predicted_index=int(row["predicted_index"]),
        predicted_label=row["predicted_label"],
        probability=float(row["probability"]),
        explained_index=indices,
        explained_label=labels,
        explained_score=tuple(float(s) for s in row["explained_score"].split(";")),
        region=tuple(float(row[k]) for k in REGION_FIELDS),  # type: ignore[arg-type]
        overlays=tuple(Path(p) for p in row["overlay"].split(";") if p),
    )


def partial_rows(out: str | os.PathLike) -> tuple[dict[int, Prediction], int]:
    """The complete rows of ``out``'s journal by input index, and the byte length they take."""
    path = Path(out) / PARTIAL_CSV
    if not path.exists():
        return {}, 0
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1  # a row cut short by the signal has no newline yet
    rows: dict[int, Prediction] = {}
    reader = csv.DictReader(io.StringIO(data[:end].decode("utf-8"), newline=""))
    for row in reader:
        if None in row or any(v is None for v in row.values()):
            break  # a torn row: the rest is redone
        rows[int(row["index"])] = _prediction(row)
    return rows, end


class Journal:
    """One run's journal in ``out``: checked when made (nothing written), then ``open``, ``add`` rows, ``close``."""

    def __init__(
        self,
        out: Path,
        record: dict,
        items: Sequence[str],
        *,
        overwrite: bool,
        resume: bool,
    ) -> None:
        self.out = Path(out)
        self.state = self.out / STATE_DIR
        self.path = self.out / PARTIAL_CSV
        self.record = {**record, "inputs": list(items)}
        self.done: dict[int, Prediction] = {}
        self.added = 0
        self.created = not self.out.exists()
        interrupted = (self.state / _RECORD).exists()
        finished = [name for name in FINISHED_FILES if (self.out / name).exists()]
        if resume:
            self._resume(interrupted, finished)
        else:
            if (interrupted or finished) and not overwrite:
                what = "an interrupted run" if interrupted else ", ".join(finished) + " from an earlier run"
                raise OutputExistsError(
                    f"{self.out} already holds {what}; pass {{overwrite}} to replace its outputs"
                    + (", {resume} to continue it," if interrupted else "")
                    + " or choose another output folder"
                )
        self.resume = resume
        self.file = None

    def open(self) -> Journal:
        """Start writing: a new journal, or the interrupted one without a row cut short by the signal."""
        if self.resume and self.end > 0:
            with open(self.path, "r+b") as f:
                f.truncate(self.end)
        elif self.resume:  # the journal lost even its header: start it again, the record kept
            write_bytes_atomic(self.path, (",".join(_FIELDS) + "\n").encode(), overwrite=True)
        else:
            self._start()
        self.file = open(self.path, "a", encoding="utf-8", newline="")  # noqa: SIM115 - closed in close()
        return self

    def _start(self) -> None:
        shutil.rmtree(self.state, ignore_errors=True)
        (self.state / "tiles").mkdir(parents=True, exist_ok=True)
        header = ",".join(_FIELDS) + "\n"
        write_bytes_atomic(self.path, header.encode(), overwrite=True)
        write_bytes_atomic(self.state / _RECORD, json.dumps(self.record, indent=1).encode(), overwrite=True)

    def _resume(self, interrupted: bool, finished: list[str]) -> None:
        if not interrupted:
            done = f" ({', '.join(finished)} is from a finished run)" if finished else ""
            raise InputError(f"nothing to resume in {self.out}: no interrupted run there{done}")
        saved = json.loads((self.state / _RECORD).read_text())
        differ = [key for key in sorted(set(saved) | set(self.record)) if saved.get(key) != self.record.get(key)]
        if differ:
            names = " and ".join("artifact" if k == "artifact_sha256" else k.replace("_", " ") for k in differ)
            text = f"cannot resume the run in {self.out}: the interrupted run had another {names}; rerun it as it was"
            error = InputError(f"{text}, or start again with overwrite=True")
            error.cli_message = f"{text}, or start again with --overwrite"
            raise error
        self.done, self.end = partial_rows(self.out)

    def add(self, rows: Sequence[tuple[int, Prediction]]) -> None:
        """Record finished images (their overlays are written already) in one write.

        The local engine records a whole batch at once, so a resumed run meets the same batches
        as an uninterrupted one (ONNX Runtime's float rounding can depend on the batch).
        """
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=_FIELDS, lineterminator="\n")
        writer.writerows({"index": index, **prediction.row()} for index, prediction in rows)
        self.file.write(buffer.getvalue())
        self.file.flush()
        before, self.added = self.added, self.added + len(rows)
        stop = os.environ.get(SIGTERM_AFTER_ENV, "")  # fault injection (tests, drills)
        if stop.isdigit() and before < int(stop) <= self.added:
            os.kill(os.getpid(), signal.SIGTERM)

    @property
    def tiles_dir(self) -> Path:
        """Where the grid thumbnails of the images done are kept (``<index>.png``)."""
        return self.state / "tiles"

    def tile(self, index: int) -> np.ndarray | None:
        """The grid thumbnail saved for a done image (RGB), or None."""
        from .images import load_image

        path = self.tiles_dir / f"{index}.png"
        return load_image(path) if path.exists() else None

    def close(self, *, finished: bool) -> None:
        """Close the journal; a finished run (its outputs written) removes it and its state.

        A run stopped before any image was done leaves nothing to resume: its journal goes too,
        and so does the output folder when this run created it and it is empty.
        """
        if self.file is None:  # never opened: nothing was written
            return
        self.file.close()
        if finished or not (self.added or self.done):
            self.path.unlink(missing_ok=True)
            shutil.rmtree(self.state, ignore_errors=True)
        if not finished and self.created:
            with contextlib.suppress(OSError):  # not empty: files of images done stay
                self.out.rmdir()
