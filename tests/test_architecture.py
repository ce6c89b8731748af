"""docs/architecture.md names modules that exist, and names every module of the builder and the checkers."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "architecture.md"
PACKAGE = ROOT / "gradcam_model"


def _named() -> tuple[set[str], set[str]]:
    """The page's backticked ``.py`` names and folder paths."""
    tokens = re.findall(r"`([^`\s]+)`", PAGE.read_text())
    modules = {t for t in tokens if t.endswith(".py")}
    folders = {t for t in tokens if t.endswith("/")}
    return modules, folders


def _resolve(name: str) -> list[Path]:
    if "/" in name:  # a path below the package (or the repository)
        return [p for p in (PACKAGE / name, ROOT / name) if p.is_file()]
    return [p for p in PACKAGE.rglob(name) if "__pycache__" not in p.parts]


def test_every_module_and_folder_the_page_names_exists():
    modules, folders = _named()
    assert len(modules) > 40 and len(folders) >= 8  # the page was read
    missing = sorted(m for m in modules if not _resolve(m))
    assert not missing, f"docs/architecture.md names modules that do not exist: {missing}"
    gone = sorted(f for f in folders if not (ROOT / f).is_dir() and not (PACKAGE / f).is_dir())
    assert not gone, f"docs/architecture.md names folders that do not exist: {gone}"


def test_the_page_names_every_module_of_the_builder_and_the_checkers():
    modules, _ = _named()
    names = {Path(m).name for m in modules}
    for folder in ("graph", "checks", "export"):
        unnamed = sorted(
            p.name for p in (PACKAGE / folder).glob("*.py") if p.name != "__init__.py" and p.name not in names
        )
        assert not unnamed, f"gradcam_model/{folder}/ has modules docs/architecture.md does not name: {unnamed}"
