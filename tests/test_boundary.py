"""The two wings: the serve side's imports never reach torch or the build side."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "gradcam_model"


def _modules(sub: str) -> list[str]:
    """The modules of subpackage ``sub``."""
    return [
        f"gradcam_model.{sub}.{p.stem}" if p.stem != "__init__" else f"gradcam_model.{sub}"
        for p in sorted((PACKAGE / sub).glob("*.py"))
    ]


SERVE_SIDE = [
    "gradcam_model",
    "gradcam_model.contract",
    "gradcam_model.errors",
    "gradcam_model._atomic",
    "gradcam_model._process",
    "gradcam_model._suggest",
    "gradcam_model._argtypes",
    "gradcam_model.bench.memory",
    "gradcam_model.checks.tolerances",
    *_modules("runtime"),
    *_modules("serving"),  # gradcam serve and the Triton writer
]
BUILD_SIDE = {
    "gradcam_model.graph.wrapper",
    "gradcam_model.graph.capture",
    "gradcam_model.graph.decompositions",
    "gradcam_model.graph.methods",
    "gradcam_model.graph.layers",
    "gradcam_model.models",
    "gradcam_model.export",
    "gradcam_model.checks.parity",
    "gradcam_model.demo",
    "gradcam_model.bench",
    "gradcam_model.graph._state",
}
HEAVY = {"torch", "torchvision", "onnx", "onnxscript", "timm"}
# the one deliberate exception: a TorchScript artifact needs libtorch, imported when one is loaded
LAZY_TORCH = {("gradcam_model.runtime.explainer", "TorchScriptExplainer.__init__"),
              ("gradcam_model.runtime.explainer", "TorchScriptExplainer._run")}  # fmt: skip


def _source(module: str) -> Path:
    parts = module.split(".")[1:]
    path = PACKAGE.joinpath(*parts)
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _imports(module: str):
    """``(imported module, enclosing function or None)`` for every import statement in ``module``."""
    tree = ast.parse(_source(module).read_text())
    package = module if _source(module).name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []

    def visit(node, scope):
        for child in ast.iter_child_nodes(node):
            inner = scope
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                inner = f"{scope}.{child.name}" if scope else child.name
            if isinstance(child, ast.Import):
                found.extend((alias.name, scope) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - (child.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                found.append((base, scope))
                found.extend((f"{base}.{alias.name}", scope) for alias in child.names)
            visit(child, inner)

    visit(tree, None)
    return found


def _python(code: str, timeout: int) -> str:
    """What ``python -c code`` prints, in a fresh interpreter of this venv (it must exit 0)."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_serve_side_imports_stay_on_the_serve_side():
    seen, queue, problems = set(), list(SERVE_SIDE), []
    while queue:
        module = queue.pop()
        if module in seen:
            continue
        seen.add(module)
        for name, scope in _imports(module):
            root = name.split(".")[0]
            if root in HEAVY and (module, scope) not in LAZY_TORCH:
                problems.append(f"{module} ({scope or 'module level'}) imports {name}")
            if any(name == b or name.startswith(b + ".") for b in BUILD_SIDE):
                problems.append(f"{module} ({scope or 'module level'}) imports build-side {name}")
            if root == "gradcam_model" and _source(name).exists() and name not in seen:
                queue.append(name)
    assert not problems, "\n".join(problems)
    assert "gradcam_model.runtime.pipeline" in seen and "gradcam_model.contract" in seen


def test_the_walk_would_see_a_violation():
    """The checker itself: the build side's exporter imports torch and the wrapper."""
    names = {name for name, _ in _imports("gradcam_model.export.onnx")}
    assert "torch" in names and "gradcam_model.graph.wrapper.GradCAMModel" in names


def test_importing_the_runtime_and_the_cli_leaves_torch_unloaded():
    code = (
        "import sys; import gradcam_model, gradcam_model.runtime, gradcam_model.cli; "
        "from gradcam_model.cli import build_parser; build_parser(); "
        "from gradcam_model import ArtifactMetadata, OUTPUT_NAMES, load_explainer, explain_files; "
        "print(sorted(m for m in ('torch', 'torchvision', 'onnx', 'onnxscript') if m in sys.modules))"
    )
    assert _python(code, 120) == "[]"


def test_build_side_names_still_load_from_the_package():
    code = "import sys, gradcam_model as g; g.GradCAMModel; print('torch' in sys.modules, g.validate.__module__)"
    assert _python(code, 300).split() == ["True", "gradcam_model.checks.parity"]


GRAPH_MUST_NOT_REACH = ("checks", "export", "runtime", "serving", "cli", "bench", "demo", "cli_ray")


def test_the_graph_builder_never_reaches_the_checkers_or_a_command():
    """gradcam_model.graph builds the graph; checkers and commands sit on top of it, never below."""
    problems = []
    for module in _modules("graph"):
        for name, scope in _imports(module):
            parts = name.split(".")
            if parts[0] == "gradcam_model" and len(parts) > 1 and parts[1] in GRAPH_MUST_NOT_REACH:
                problems.append(f"{module} ({scope or 'module level'}) imports {name}")
    assert not problems, "\n".join(problems)
    assert len(_modules("graph")) >= 10  # the walk saw the package


def test_the_graph_walk_would_see_a_violation():
    """The checker itself: a checker imports the builder, which the rule above forbids the other way."""
    names = {name for name, _ in _imports("gradcam_model.checks.parity")}
    assert "gradcam_model.graph.reference" in names and "gradcam_model.runtime.explainer" in names


def test_every_module_imports_first():
    """Each module imports on its own in a fresh package (no import cycle hidden by the usual import order)."""
    modules = [m for sub in ("graph", "checks", "export", "cli") for m in _modules(sub)]
    code = (
        "import importlib, sys\n"
        f"failed = []\nfor name in {modules!r}:\n"
        "    for loaded in [m for m in sys.modules if m == 'gradcam_model' or m.startswith('gradcam_model.')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n        importlib.import_module(name)\n"
        "    except Exception as exc:\n        failed.append(f'{name}: {type(exc).__name__}: {exc}')\n"
        "print('\\n'.join(failed))\n"
    )
    assert len(modules) > 40
    failed = _python(code, 600)
    assert failed == "", failed
