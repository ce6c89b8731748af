"""The upload page of `gradcam serve` (GET /), used end to end in a real headless Chromium."""

from __future__ import annotations

import base64
import urllib.request

import cv2
import numpy as np
import pytest
from browser import check_screenshot, console_errors
from selenium.webdriver.support.ui import WebDriverWait
from test_serve import NAMES, artifact, running_server  # noqa: F401  (artifact: the module's fixture)


@pytest.fixture(scope="module")
def server(artifact, tmp_path_factory):  # noqa: F811
    with running_server(artifact, tmp_path_factory.mktemp("page") / "server.log", profile=False) as server:
        yield server


@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    rng = np.random.default_rng(4)
    smooth = cv2.resize(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), (120, 90), interpolation=cv2.INTER_CUBIC)
    path = tmp_path_factory.mktemp("page-pictures") / "fish.jpg"
    cv2.imwrite(str(path), smooth)
    return path


def _upload(browser, path) -> str:
    browser.execute_script("document.body.dataset.state = 'waiting'")
    browser.find_element("id", "file").send_keys(str(path))
    WebDriverWait(browser, 60).until(
        lambda d: d.execute_script("return document.body.dataset.state") in ("done", "error")
    )
    return browser.execute_script("return document.body.dataset.state")


def _natural_size(browser, element_id: str) -> tuple[int, int]:
    browser.execute_script("return document.getElementById(arguments[0]).decode()", element_id)
    return tuple(browser.execute_script(
        "const i = document.getElementById(arguments[0]); return [i.naturalWidth, i.naturalHeight]", element_id
    ))  # fmt: skip


def _explain(server, path, **extra) -> dict:
    instance = {"image_bytes": {"b64": base64.b64encode(path.read_bytes()).decode()}, **extra}
    status, body = server.request("/v1/models/fish:explain", {"instances": [instance]})
    assert status == 200, body
    return body["explanations"][0]


def test_the_page_is_served_from_the_server_itself(server):
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/", timeout=30) as response:
        assert response.status == 200 and response.headers["content-type"].startswith("text/html")
        page = response.read().decode()
    assert "http://" not in page and "https://" not in page  # no external assets
    assert '"name":"fish"' in page.replace(" ", "")


def test_a_picture_is_explained_end_to_end(server, browser, picture, tmp_path):
    browser.get(f"http://127.0.0.1:{server.port}/")
    assert _upload(browser, picture) == "done"
    expected = _explain(server, picture)
    shown = browser.execute_script(
        "return [...document.querySelectorAll('#top tbody td:first-child')].map(t => t.textContent)"
    )
    assert shown == [t["label"] for t in expected["top"]] and len(shown) == 5
    assert browser.find_element("id", "explained").text.startswith(f"explained: {expected['explained'][0]['label']}")
    assert _natural_size(browser, "overlay") == (120, 90)  # the overlay at the picture's size
    assert _natural_size(browser, "map") == (64, 64)  # the map alone at the model's input size
    assert console_errors(browser) == []
    check_screenshot(browser, tmp_path / "upload.png", "upload.png")


def test_another_class_can_be_chosen(server, browser, picture):
    browser.get(f"http://127.0.0.1:{server.port}/")
    options = browser.execute_script("return [...document.querySelectorAll('#class option')].map(o => o.textContent)")
    assert options[1:] == [f"{i}: {name}" for i, name in enumerate(NAMES)]
    assert _upload(browser, picture) == "done"
    browser.execute_script("document.body.dataset.state = 'waiting'")
    browser.execute_script(
        "const s = document.getElementById('class'); s.value = '3'; s.dispatchEvent(new Event('change'))"
    )
    WebDriverWait(browser, 60).until(lambda d: d.execute_script("return document.body.dataset.state") == "done")
    assert browser.find_element("id", "explained").text.startswith("explained: tiger shark")
    assert _explain(server, picture, **{"class": 3})["explained"][0]["label"] == "tiger shark"


def test_a_file_that_is_not_a_picture_shows_the_servers_message(server, browser, tmp_path):
    path = tmp_path / "notes.png"
    path.write_bytes(b"these are notes, not a picture")
    browser.get(f"http://127.0.0.1:{server.port}/")
    assert _upload(browser, path) == "error"
    instance = {"image_bytes": {"b64": base64.b64encode(path.read_bytes()).decode()}}
    status, body = server.request("/v1/models/fish:explain", {"instances": [instance], "output": "png"})
    assert status == 400
    assert browser.find_element("id", "error").text == body["error"]
    assert browser.execute_script("return document.getElementById('result').hidden") is True
