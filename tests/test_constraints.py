"""constraints.txt: pins for every dependency, inside pyproject's ranges, the README's, and the ones installed."""

from __future__ import annotations

import os
import re
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent


def _pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line.strip())
        assert match, f"constraints.txt: not a 'name==version' line: {line!r}"
        name = canonicalize_name(match[1])
        assert name not in pins, f"constraints.txt pins {name} twice"
        pins[name] = match[2]
    return pins


def _requirements() -> list[Requirement]:
    import tomllib  # Python 3.11+; the tests run on 3.11

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        lines += extra
    requirements = [Requirement(line) for line in lines]
    # the extras of our own package name other extras; markers pick onnxruntime or onnxruntime-gpu
    return [r for r in requirements if r.name != "gradcam_model" and (r.marker is None or r.marker.evaluate())]


def test_every_dependency_is_pinned_within_its_range():
    pins = _pins()
    requirements = _requirements()
    assert len(requirements) > 15
    for requirement in requirements:
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} (pyproject.toml) has no pin in constraints.txt"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {name}=={pins[name]}, outside pyproject.toml's {requirement}"
        )


def test_the_readme_names_the_pinned_versions():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Tested versions") :]
    rows = re.findall(r"^\| ([a-z0-9\-]+) \| ([0-9][^ |]*) \|$", section, flags=re.M)
    assert len(rows) >= 10
    pins = _pins()
    for name, version in rows:
        assert pins.get(canonicalize_name(name)) == version, f"README says {name} {version}, constraints.txt differs"


def test_the_running_venv_was_installed_through_the_constraints():
    """scripts/setup.sh applied the pins (GRADCAM_CONSTRAINTS empty means a deliberate newest-versions run)."""
    if os.environ.get("GRADCAM_CONSTRAINTS") == "":
        pytest.skip("GRADCAM_CONSTRAINTS is empty: this run tests the newest versions, not the pins")
    pins = _pins()
    for requirement in _requirements():
        name = canonicalize_name(requirement.name)
        assert metadata.version(name) == pins[name], f"{name} {metadata.version(name)} installed, pinned {pins[name]}"
