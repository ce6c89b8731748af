"""report.html of explain and evaluate, opened in a real headless Chromium (tests/browser.py)."""

from __future__ import annotations

import csv
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from browser import check_screenshot, console_errors, wait_ready
from selenium.common.exceptions import NoAlertPresentException

from gradcam_model.cli import main
from gradcam_model.runtime import load_explainer
from gradcam_model.runtime.outputs import ExplainSummary, Prediction
from gradcam_model.runtime.report import write_explain_report

# HTML (a file name cannot hold '/', so no closing tag), quotes and a URL fragment in one name
ODD_NAME = "<script>alert('x') <img src=x onerror=alert(1)> \"quoted\" #1.png"


@pytest.fixture(scope="module")
def explained(tmp_path_factory, crop_artifact, odd_picture_dir):
    """`gradcam explain` of the odd pictures, a picture with an HTML name, and a broken file."""
    work = tmp_path_factory.mktemp("report")
    pictures = work / "pictures"
    shutil.copytree(odd_picture_dir, pictures)
    shutil.copy(odd_picture_dir / "photo.jpg", pictures / ODD_NAME)
    (pictures / "broken.png").write_bytes(b"not a picture")
    assert main(["explain", str(crop_artifact), str(pictures), "--out", str(work / "out")]) == 1
    with open(work / "out" / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return {"out": work / "out", "rows": rows, "ok": [r for r in rows if not r["error"]]}


def _shown(driver) -> list[str]:
    """The names on the cards, in page order."""
    return driver.execute_script("return [...document.querySelectorAll('.card .name')].map(n => n.textContent)")


def _set(driver, element_id: str, value: str) -> None:
    driver.execute_script(
        "const e = document.getElementById(arguments[0]); e.value = arguments[1];"
        "e.dispatchEvent(new Event(e.tagName === 'SELECT' ? 'change' : 'input'));",
        element_id,
        value,
    )


def test_the_explain_report_shows_every_picture_and_escapes_names(browser, explained, tmp_path):
    page = explained["out"] / "report.html"
    text = page.read_text()
    assert "<script>alert" not in text and "http://" not in text and "https://" not in text  # no fetches
    browser.get(page.as_uri())
    wait_ready(browser)
    assert browser.execute_script("return document.body.dataset.ready") == "true"
    with pytest.raises(NoAlertPresentException):  # the name's <script> and onerror never ran
        _ = browser.switch_to.alert.text
    names = _shown(browser)
    assert names == [r["path"] for r in explained["ok"]]  # every picture, in input order, names verbatim
    assert any(name.endswith(ODD_NAME) for name in names)
    failures = browser.find_element("css selector", "details.failures").text
    assert "1 picture could not be explained" in failures and "broken.png" in failures
    loaded = browser.execute_script(
        "return [...document.querySelectorAll('.card img')].map(i => i.complete && i.naturalWidth > 0)"
    )
    assert loaded == [True] * len(names)  # relative paths resolve, the odd name included
    assert console_errors(browser) == []
    check_screenshot(browser, tmp_path / "report.png", "report.png")


def test_sorting_and_filtering_change_what_is_shown(browser, explained):
    rows = explained["ok"]
    browser.get((explained["out"] / "report.html").as_uri())
    wait_ready(browser)
    by_confidence = sorted(rows, key=lambda r: -float(r["probability"]))
    _set(browser, "sort", "confidence-desc")
    assert _shown(browser) == [r["path"] for r in by_confidence]
    _set(browser, "sort", "confidence-asc")
    assert _shown(browser) == [r["path"] for r in sorted(rows, key=lambda r: float(r["probability"]))]
    classes = sorted({r["predicted_label"] for r in rows})
    for label in classes:
        _set(browser, "class", label)
        expected = [
            r["path"] for r in sorted(rows, key=lambda r: float(r["probability"])) if r["predicted_label"] == label
        ]
        assert _shown(browser) == expected
        assert browser.find_element("id", "shown").text == f"showing {len(expected)} of {len(rows)} pictures"
    _set(browser, "class", "")
    probabilities = sorted(float(r["probability"]) for r in rows)
    low = probabilities[len(probabilities) // 2] * 100  # the upper half
    _set(browser, "pmin", f"{low:.4f}")
    assert sorted(_shown(browser)) == sorted(r["path"] for r in rows if float(r["probability"]) * 100 >= low)
    _set(browser, "pmax", "0")
    assert _shown(browser) == []
    assert console_errors(browser) == []


def test_a_click_opens_the_overlay_beside_the_original(browser, explained):
    browser.get((explained["out"] / "report.html").as_uri())
    wait_ready(browser)
    browser.find_elements("css selector", ".card")[1].click()
    assert browser.execute_script("return document.getElementById('viewer').hidden") is False
    for image in ("v-overlay", "v-original"):
        browser.execute_script(
            "const i = document.getElementById(arguments[0]); return i.decode ? i.decode() : null", image
        )
        assert (
            browser.execute_script("const i = document.getElementById(arguments[0]); return i.naturalWidth", image) > 0
        )
    assert browser.find_element("id", "v-title").text == explained["ok"][1]["path"]
    browser.find_element("tag name", "body").send_keys("\ue00c")  # Escape
    assert browser.execute_script("return document.getElementById('viewer').hidden") is True


def test_an_embedded_report_is_one_file(browser, explained, crop_artifact, odd_picture_dir, tmp_path):
    out = tmp_path / "embedded"
    assert main(["explain", str(crop_artifact), str(odd_picture_dir / "tall.png"), "--out", str(out), "--embed"]) == 0
    alone = tmp_path / "elsewhere" / "report.html"
    alone.parent.mkdir()
    shutil.move(out / "report.html", alone)
    shutil.rmtree(out)  # the pictures are gone: the page must not need them
    browser.get(alone.as_uri())
    wait_ready(browser)
    browser.find_element("css selector", ".card").click()
    for image in ("v-overlay", "v-original"):
        browser.execute_script("return document.getElementById(arguments[0]).decode()", image)
        assert browser.execute_script("return document.getElementById(arguments[0]).naturalWidth", image) > 0
    assert console_errors(browser) == []


def test_a_run_with_nothing_explained_says_so(browser, crop_artifact, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    assert main(["explain", str(crop_artifact), str(tmp_path / "in"), "--out", str(tmp_path / "out")]) == 1
    browser.get((tmp_path / "out" / "report.html").as_uri())
    wait_ready(browser)
    body = browser.find_element("tag name", "body").text
    assert "No picture was explained" in body and "broken.jpg" in body
    assert console_errors(browser) == []


def test_ten_thousand_pictures_open_a_page_at_a_time(browser, crop_artifact, odd_picture_dir, tmp_path):
    """The gallery renders 120 cards, more as the reader scrolls; the load time is printed (docs/cli.md)."""
    meta = load_explainer(crop_artifact).metadata
    overlays = []
    for k, name in enumerate(("a", "b", "c")):
        path = tmp_path / f"{name}.jpg"
        cv2.imwrite(str(path), np.full((64, 64, 3), 60 * k + 40, np.uint8))
        overlays.append(path)
    rng = np.random.default_rng(0)
    predictions = [
        Prediction(overlays[i % 3], None, predicted_index=i % 3, predicted_label=f"class {i % 3}",
                   probability=float(p), explained_index=(i % 3,), explained_label=(f"class {i % 3}",),
                   explained_score=(float(p),), region=(0.0, 0.0, 64.0, 64.0), overlays=(overlays[i % 3],))
        for i, p in enumerate(rng.random(10_000))
    ]  # fmt: skip
    summary = ExplainSummary(predictions, tmp_path / "predictions.csv", tmp_path, None, "CPUExecutionProvider", 1.0)
    page = write_explain_report(summary, tmp_path, meta)
    started = time.perf_counter()
    browser.get(page.as_uri())
    wait_ready(browser)
    seconds = time.perf_counter() - started
    timing = browser.execute_script("const t = performance.getEntriesByType('navigation')[0]; return t.loadEventEnd")
    print(f"\n10,000-picture report: {page.stat().st_size / 1e6:.1f} MB, loaded in {seconds:.2f} s "
          f"(navigation loadEventEnd {timing:.0f} ms)")  # fmt: skip
    assert browser.find_element("id", "shown").text == "showing 10000 of 10000 pictures"
    assert len(_shown(browser)) == 120
    browser.execute_script("window.scrollTo(0, document.body.scrollHeight)")
    deadline = time.monotonic() + 10
    while len(_shown(browser)) <= 120 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(_shown(browser)) >= 240
    assert console_errors(browser) == []


def test_the_evaluate_report_shows_tables_curves_and_pictures(browser, artifacts, picture_dir, tmp_path):
    out = tmp_path / "eval"
    args = ["evaluate", str(artifacts["static.onnx"]), str(picture_dir), "--out", str(out), "--steps", "3"]
    assert main([*args, "--random-draws", "2", "--metrics", "average_drop,deletion,insertion"]) == 0
    browser.get((out / "report.html").as_uri())
    wait_ready(browser)
    headers = browser.execute_script("return [...document.querySelectorAll('table th')].map(h => h.textContent)")
    assert headers[:3] == ["metric", "better", "gradcam"] and "verdict" in headers
    metrics = browser.execute_script(
        "return [...document.querySelectorAll('table tr td:first-child')].map(t => t.textContent)"
    )
    assert metrics == ["Average Drop", "Deletion AUC", "Insertion AUC"]
    browser.execute_script("window.scrollTo(0, document.body.scrollHeight)")
    images = browser.execute_script(
        "return Promise.all([...document.images].map(i => i.decode().then(() => [i.alt, i.naturalWidth])))"
    )
    alts = [alt for alt, _ in images]
    assert {"deletion curve", "insertion curve"} <= set(alts) and all(width > 0 for _, width in images)
    strips = browser.execute_script("return [...document.querySelectorAll('h2')].map(h => h.textContent)")
    assert "Deletion AUC: best pictures" in strips and "Insertion AUC: worst pictures" in strips
    assert {"a.png", "b.png", "c.png"} <= {Path(alt).name for alt in alts}
    browser.execute_script("window.scrollTo(0, 0)")
    assert console_errors(browser) == []
    check_screenshot(browser, tmp_path / "evaluate-report.png", "evaluate-report.png")
