"""README claims that tests can check: the supported-architecture table is the tested zoo."""

from __future__ import annotations

import re
from pathlib import Path

from zoo import ZOO

from gradcam_model import METHODS

README = Path(__file__).resolve().parent.parent / "README.md"


def test_supported_architectures_table_equals_tested_zoo():
    text = README.read_text()
    table = text.split("<!-- zoo-table")[1].split("<!-- /zoo-table -->")[0]
    rows = [
        tuple(cell.strip() for cell in line.strip().strip("|").split("|"))
        for line in table.splitlines()
        if line.startswith("| ") and not line.startswith("| architecture")
    ]
    assert rows == [(c.arch, c.last, c.inner, str(c.size)) for c in ZOO]


def test_transformer_table_equals_tested_transformers():
    from test_transformers import TRANSFORMERS

    table = README.read_text().split("<!-- transformer-table")[1].split("<!-- /transformer-table -->")[0]
    rows = [
        tuple(cell.strip() for cell in line.strip().strip("|").split("|"))
        for line in table.splitlines()
        if line.startswith("| ") and not line.startswith("| architecture")
    ]
    assert rows == [(c.arch, c.layer, str(c.size), c.layout) for c in TRANSFORMERS]


def test_documented_methods_equal_implemented_methods():
    text = README.read_text().split("## Methods")[1].split("## Supported architectures")[0]
    documented = re.findall(r"^\| `([a-z+-]+)` \|", text, flags=re.M)
    assert documented == list(METHODS)


def test_readme_test_command_is_what_ci_runs():
    ci = (README.parent / ".ci" / "run").read_text()
    assert "scripts/test.sh" in ci
    assert "bash scripts/test.sh" in README.read_text()


def test_demo_setup_installs_export_and_demo_only_and_no_toolchain():
    demo = (README.parent / "scripts" / "demo.sh").read_text()
    assert '-e ".[export,demo]"' in demo
    assert "apt-get" not in demo and "setup.sh" not in demo and "[dev]" not in demo
    setup = (README.parent / "scripts" / "setup.sh").read_text()  # the test setup: everything
    assert '-e ".[dev]"' in setup and "cmake g++ make" in setup


def test_base_install_is_the_serve_side():
    import tomllib

    project = tomllib.loads((README.parent / "pyproject.toml").read_text())["project"]
    base = {re.split(r"[<>=;\[ ]", d)[0] for d in project["dependencies"]}
    assert base == {"numpy", "opencv-python-headless", "onnxruntime-gpu", "onnxruntime", "tqdm"}
    extras = project["optional-dependencies"]
    assert {re.split(r"[<>=;\[ ]", d)[0] for d in extras["export"]} == {"torch", "torchvision", "onnx", "onnxscript"}
    assert "gradcam_model[export,demo,bench,serve,ray,openvino]" in extras["dev"]
    text = README.read_text()
    # not on PyPI: every install line installs from the clone (or a wheel built from it)
    assert "is not published on PyPI: `pip install gradcam_model` finds nothing" in text
    for line in ("| `pip install .` |", '| `pip install ".[export]"` |', 'pip install -e ".[dev]"',
                 "pip wheel --no-deps -w dist ."):  # fmt: skip
        assert line in text
    text = text.replace("`pip install gradcam_model` finds nothing", "")  # the one mention, saying it fails
    installs = re.findall(r"pip install (\S+)", text)
    assert installs and not [i for i in installs if i.strip("`\"'").startswith("gradcam_model")], installs


def test_the_readme_puts_the_venv_on_path_before_using_gradcam():
    text = README.read_text()
    first_use = text.index("$ gradcam ")
    assert text.index("source .venv/bin/activate") < first_use
    assert "`gradcam` is the console script of the install: in `.venv/bin`" in text
