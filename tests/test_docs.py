"""Every ``gradcam ...`` command line in README.md and docs/*.md against the real parser, so docs cannot drift.

Commands come from console blocks (``$ gradcam ...``, continuation lines joined), from
inline code spans (`` `gradcam explain --help` ``) and from table rows that start with
one (the options in the row's other cells belong to that command). Each must name a subcommand the
parser has, and each ``-x``/``--flag`` must be an option of that subcommand (or of the
top-level parser before it). Subcommands and options are read from
:func:`gradcam_model.cli.build_parser`; a command that parses its own arguments
(``bench`` and its sections) is checked against the parser it builds.
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from gradcam_model.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)
_SPAN = re.compile(r"`([^`\n]+)`")
_ENV = re.compile(r"^[A-Z_][A-Z0-9_]*=\S*$")


def _command(text: str) -> list[str] | None:
    """The tokens of ``text`` when it is a ``gradcam`` command line (env assignments dropped), else None."""
    try:
        tokens = shlex.split(text, comments=True)
    except ValueError:
        return None
    while tokens and _ENV.match(tokens[0]):
        tokens.pop(0)
    return tokens if tokens[:1] == ["gradcam"] else None


def commands_in(text: str) -> list[tuple[int, list[str]]]:
    """``(line number, tokens)`` of every ``gradcam`` command in a Markdown text."""
    found = []
    for block in _FENCE.finditer(text):
        start = text.count("\n", 0, block.start(1)) + 1
        lines = block.group(1).split("\n")
        i = 0
        while i < len(lines):
            line, number = lines[i], start + i
            while line.rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                line = line.rstrip()[:-1] + " " + lines[i].strip()
            tokens = _command(line.strip().removeprefix("$ "))
            if tokens:
                found.append((number, tokens))
            i += 1
    prose = _FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    for number, line in enumerate(prose.split("\n"), 1):
        spans = [m.group(1) for m in _SPAN.finditer(line)]
        for i, span in enumerate(spans):
            tokens = _command(span)
            if tokens and line.startswith("|") and i == 0:
                # a table row about a command: the options in its other cells are that command's
                tokens += [t for other in spans[1:] if other.startswith("-") for t in other.split()[:1]]
            if tokens:
                found.append((number, tokens))
    return found


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return set(parser._option_string_actions)


def problems_of(tokens: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """What in a ``gradcam`` command line the parser does not know (empty: nothing)."""
    words = tokens[1:]
    while words and words[0].startswith("-"):
        if words[0].split("=")[0] not in _options(parser):
            return [f"no global option {words[0]}"]
        words = words[1:]
    if not words:
        return []
    subparsers = parser._subparsers._group_actions[0].choices
    if words[0] not in subparsers:
        return [f"no command {words[0]!r} (commands: {', '.join(subparsers)})"]
    sub, rest = subparsers[words[0]], words[1:]
    raw_parser = sub.get_default("raw_parser")
    if raw_parser is not None:
        sub, _, rest = raw_parser(rest)
    flags = [w.split("=")[0] for w in rest if re.match(r"^--?[A-Za-z]", w)]
    return [f"{words[0]} has no option {flag}" for flag in flags if flag not in _options(sub)]


@pytest.fixture(scope="module")
def parser():
    return build_parser()


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_documented_commands_match_the_parser(doc, parser):
    problems = [
        f"{doc.name}:{line}: `{shlex.join(tokens)}`: {problem}"
        for line, tokens in commands_in(doc.read_text())
        for problem in problems_of(tokens, parser)
    ]
    assert not problems, "\n".join(problems)


def test_the_docs_hold_enough_commands_to_check():
    counts = {doc.name: len(commands_in(doc.read_text())) for doc in DOCS}
    assert counts["README.md"] >= 8 and counts["cli.md"] >= 20, counts
    commands = {tokens[1] for doc in DOCS for _, tokens in commands_in(doc.read_text()) if len(tokens) > 1}
    assert {"layers", "export", "validate", "explain", "demo", "bench"} <= commands


def test_the_checker_sees_drift(parser):
    text = (
        "Run `gradcam export --model resnet50 --out x`.\n| `gradcam bench` | `--devices cuda`, `-v` |\n"
        "```console\n$ gradcam explain a.onnx photos \\\n    --out o --colour jet\n$ gradcam unzip a.onnx\n"
        "$ OMP_WAIT_POLICY=PASSIVE gradcam bench --pipeline --images 8 --frobnicate\n```\n"
    )
    found = commands_in(text)
    assert [line for line, _ in found] == [4, 6, 7, 1, 2]
    assert [problems_of(tokens, parser) for _, tokens in found] == [
        ["explain has no option --colour"],
        [f"no command 'unzip' (commands: {', '.join(parser._subparsers._group_actions[0].choices)})"],
        ["bench has no option --frobnicate"],
        ["export has no option --model"],
        ["bench has no option --devices"],
    ]
