"""The command registry: an extra ``gradcam`` command or ``gradcam bench`` section is one line."""

from __future__ import annotations

import sys
import types

import gradcam_model.cli
import gradcam_model.cli.bench
from gradcam_model.cli import build_parser, main


def _module(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    return module


def test_an_extra_command_is_one_registry_line(monkeypatch, capsys):
    def register(sub, parents):
        p = sub.add_parser("hello", help="say hello", parents=parents)
        p.add_argument("--times", type=int, default=1)
        p.set_defaults(handler=lambda args: print("hello " * args.times) or 3)

    monkeypatch.setitem(sys.modules, "extra_hello_command", _module("extra_hello_command", register=register))
    monkeypatch.setattr(gradcam_model.cli, "COMMANDS", (*gradcam_model.cli.COMMANDS, "extra_hello_command"))
    assert main(["hello", "--times", "2", "-v"]) == 3
    assert capsys.readouterr().out.strip() == "hello hello"
    assert "say hello" in build_parser().format_help()


def test_an_extra_bench_section_is_one_registry_line(monkeypatch, capsys):
    """A section parses its own options and keeps the shared -v; it needs no torch of its own."""

    def add_arguments(parser):
        parser.add_argument("--clients", type=int, default=1)

    def run(args):
        print(f"clients={args.clients} verbose={args.verbose}")
        return 0

    section = _module("extra_bench_section", __doc__="Time something else.", add_arguments=add_arguments, run=run)
    monkeypatch.setitem(sys.modules, "extra_bench_section", section)
    sections = (*gradcam_model.cli.bench.SECTIONS, ("--else", "extra_bench_section", "something else"))
    monkeypatch.setattr(gradcam_model.cli.bench, "SECTIONS", sections)
    assert main(["-v", "bench", "--else", "--clients", "4"]) == 0
    assert capsys.readouterr().out.strip() == "clients=4 verbose=1"
    assert main(["bench", "--else", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: gradcam bench --else") and "Time something else." in out
    assert "--else: something else" in " ".join(build_parser().format_help().split())  # argparse wraps lines
