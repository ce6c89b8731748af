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


def test_documented_methods_equal_implemented_methods():
    text = README.read_text().split("## Methods")[1].split("## Supported architectures")[0]
    documented = re.findall(r"^\| `([a-z+-]+)` \|", text, flags=re.M)
    assert documented == list(METHODS)


def test_readme_test_command_is_what_ci_runs():
    ci = (README.parent / ".ci" / "run").read_text()
    assert "scripts/test.sh" in ci
    assert "bash scripts/test.sh" in README.read_text()
