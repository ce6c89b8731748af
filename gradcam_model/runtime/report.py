"""``report.html``: one self-contained page to look at an explain or evaluate run.

No network fetches: the CSS and JavaScript (``assets/``) are written into the page, and the
pictures are referenced relative to the report (``embed=True``: written into it as data
URIs). Text from the run (file names, labels, error messages) reaches the page only through
``html.escape`` or, for the explain gallery, a JSON block whose ``<`` are escaped and which
the script shows with ``textContent``: a file named ``<script>.png`` stays a name.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from importlib import resources
from pathlib import Path
from urllib.parse import quote

from .._atomic import write_bytes_atomic

__all__ = ["write_evaluate_report", "write_explain_report"]

REPORT = "report.html"
_BROWSER_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
                  ".webp": "image/webp", ".bmp": "image/bmp"}  # fmt: skip
_BEST = 4  # pictures shown per metric, best and worst


def _asset(name: str) -> str:
    return resources.files(__package__).joinpath("assets", name).read_text(encoding="utf-8")


class _Pictures:
    """``src`` values for pictures: paths relative to the report, or data URIs when embedding."""

    def __init__(self, out: Path, embed: bool) -> None:
        self.out, self.embed = out.resolve(), embed

    def src(self, path: str | os.PathLike) -> str:
        path = Path(path)
        if self.embed:
            return self._data_uri(path)
        relative = os.path.relpath(path.resolve(), self.out)
        return quote(Path(relative).as_posix())  # '#', '?', '%' and spaces in names stay part of the path

    @staticmethod
    def _data_uri(path: Path) -> str:
        kind = _BROWSER_TYPES.get(path.suffix.lower())
        try:
            if kind is not None:
                data = path.read_bytes()
            else:  # TIFF and the like: browsers cannot show them; a PNG of the same pixels
                import cv2

                from .images import load_image

                ok, buffer = cv2.imencode(".png", cv2.cvtColor(load_image(path), cv2.COLOR_RGB2BGR))
                data, kind = buffer.tobytes(), "image/png"
        except (OSError, ValueError):
            return ""
        return f"data:{kind};base64,{base64.b64encode(data).decode('ascii')}"


def _page(title: str, body: str, script: str = "") -> bytes:
    text = (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'<title>{html.escape(title)}</title>\n<link rel="icon" href="data:,">\n'
        f"<style>\n{_asset('report.css')}</style>\n</head>\n<body>\n"
        f"{body}\n{script}</body>\n</html>\n"
    )
    return text.encode("utf-8")


def _json_block(data: dict) -> str:
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")
    return f'<script type="application/json" id="data">{text}</script>\n'


def _failures(errors: list[tuple[str, str]], what: str, verb: str) -> str:
    if not errors:
        return ""
    items = "".join(
        f"<li><code>{html.escape(name)}</code>: {html.escape(why.removeprefix(f'{name}: '))}</li>"
        for name, why in errors
    )
    count = f"{len(errors)} {what}" if len(errors) > 1 else f"1 {what.removesuffix('s')}"
    return (
        f'<section><details class="failures" open><summary>{count} could not be {verb}</summary>'
        f"<ul>{items}</ul></details></section>\n"
    )


def write_explain_report(summary, out: Path, metadata, *, embed: bool = False) -> Path:
    """Write ``out/report.html`` for an explain run (either engine) and return its path."""
    from .outputs import _same_label

    pictures = _Pictures(out, embed)
    items = []
    for p in summary.predictions:
        if p.error or not p.overlays:
            continue
        items.append({
            "name": str(p.path),
            "overlays": [pictures.src(o) for o in p.overlays],
            "original": pictures.src(p.path),
            "predicted": p.predicted_label,
            "probability": round(float(p.probability), 6),
            "true_label": p.true_label,
            "correct": bool(p.true_label) and _same_label(p.predicted_label, p.true_label),
            "explained": [[label, round(float(s), 6)] for label, s in zip(p.explained_label, p.explained_score)],
            "region": None if p.region is None else [round(v, 2) for v in p.region],
        })  # fmt: skip
    title = f"{metadata.architecture} {metadata.method} at {metadata.target_layer}"
    head = (
        f"<header><h1>{html.escape(title)}</h1><p class='muted'>explained {summary.explained} of "
        f"{summary.total} pictures on {html.escape(summary.provider)}; preprocessing: "
        f"{html.escape(metadata.preprocessing.describe(metadata.input_size))}</p></header>\n"
    )
    body = head + _failures([(str(p.path), p.error) for p in summary.failures], "pictures", "explained")
    if not items:
        body += "<main><p class='empty'>No picture was explained, so there is nothing to show.</p></main>"
        return _write(out, _page(title, body))
    body += (
        '<section id="controls"><label>sort <select id="sort"><option value="input">input order</option>'
        '<option value="confidence-desc">confidence, high first</option>'
        '<option value="confidence-asc">confidence, low first</option></select></label>'
        '<label>predicted class <select id="class"><option value="">every class</option></select></label>'
        '<label>probability from <input id="pmin" type="number" min="0" max="100" step="1" placeholder="0">'
        ' to <input id="pmax" type="number" min="0" max="100" step="1" placeholder="100"> %</label>'
        '<span id="shown" class="muted"></span></section>\n<main id="gallery"></main><div id="sentinel"></div>\n'
        '<div id="viewer" hidden role="dialog" aria-modal="true"><div class="bar"><strong id="v-title"></strong>'
        '<button id="v-close" type="button">close (Esc)</button></div><div class="pair">'
        '<figure><img id="v-overlay" alt="overlay"><figcaption id="v-overlay-cap"></figcaption></figure>'
        '<figure><img id="v-original" alt="original"><figcaption id="v-original-cap"></figcaption></figure>'
        "</div></div>\n"
    )
    script = _json_block({"items": items}) + f"<script>\n{_asset('report.js')}</script>\n"
    return _write(out, _page(title, body, script))


def _write(out: Path, page: bytes) -> Path:
    path = out / REPORT
    write_bytes_atomic(path, page, overwrite=True)
    return path


def _number(value) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.4f}"


def write_evaluate_report(evaluation, out: Path, pictures: dict[str, Path] | None = None, *,
                          embed: bool = False) -> Path:  # fmt: skip
    """Write ``out/report.html`` for an evaluation: the tables, the curves, best and worst pictures per metric.

    ``pictures`` maps the evaluation's image names to their files (without it, no pictures are shown).
    """
    import numpy as np

    from .evaluate import BETTER, TITLES

    meta = evaluation.metadata
    src = _Pictures(out, embed)
    title = f"evaluation: {meta.architecture} {meta.method} at {meta.target_layer}"
    summary, baselines = evaluation.summary(), evaluation.baseline_summary()
    margins = {g.metric: g for g in evaluation.margins()}
    body = (
        f"<header><h1>{html.escape(title)}</h1><p class='muted'>{len(evaluation.names)} pictures scored"
        f"{f', {len(evaluation.errors)} unreadable' if evaluation.errors else ''}; how to read each metric: "
        "summary.md</p></header>\n"
    )
    body += _failures(sorted(evaluation.errors.items()), "pictures", "scored")
    if not evaluation.names:
        body += "<main><p class='empty'>No picture could be scored, so there is nothing to show.</p></main>"
        return _write(out, _page(title, body))
    head = ["metric", "better", meta.method, *baselines, *(["margin [95% CI]", "verdict"] if margins else [])]
    rows = []
    for metric, value in summary.items():
        cells = [html.escape(TITLES[metric]), BETTER[metric], f'<td class="num">{_number(value)}']
        cells = [f"<td>{cells[0]}", f"<td>{cells[1]}", cells[2]]
        cells += [f'<td class="num">{_number(baselines[b].get(metric))}' for b in baselines]
        if margins:
            g = margins.get(metric)
            cells += ["<td>-", "<td>-"] if g is None else [
                f"<td>{g.margin:+.4f} [{g.low:+.4f}, {g.high:+.4f}] vs {html.escape(g.best_baseline)}",
                f"<td>{html.escape(g.verdict)}",
            ]  # fmt: skip
        rows.append("<tr>" + "</td>".join(cells) + "</td></tr>")
    body += "<main><h2>Scores</h2><table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"
    body += "".join(rows) + "</table>\n"
    curves = [name for name in evaluation.curves if (out / f"{name}.png").exists()]
    if curves:
        body += "<h2>Curves</h2><div class='curves'>" + "".join(
            f'<img loading="lazy" src="{src.src(out / f"{n}.png")}" alt="{n} curve">' for n in curves
        ) + "</div>\n"  # fmt: skip
    if pictures:
        for metric, scores in evaluation.scores.items():
            finite = [i for i in np.argsort(scores, kind="stable") if np.isfinite(scores[i])]
            if BETTER[metric] == "higher":
                finite.reverse()
            for which, chosen in (("best", finite[:_BEST]), ("worst", finite[::-1][:_BEST])):
                body += f"<h2>{html.escape(TITLES[metric])}: {which} pictures</h2><div class='strip'>"
                for i in chosen:
                    name = evaluation.names[i]
                    path = pictures.get(name)
                    image = f'<img loading="lazy" src="{src.src(path)}" alt="{html.escape(name)}">' if path else ""
                    body += (f"<figure>{image}<figcaption><code>{html.escape(name)}</code><br>"
                             f"{html.escape(meta.label(int(evaluation.classes[i])))}: {scores[i]:.4f}"
                             "</figcaption></figure>")  # fmt: skip
                body += "</div>\n"
    body += "</main>"
    return _write(out, _page(title, body))
