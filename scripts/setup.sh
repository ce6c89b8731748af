#!/usr/bin/env bash
# Set up .venv for the TESTS on a fresh machine: torch/torchvision (taken from this
# machine's disk where it has them), the package with every extra ([dev]), and a C++
# toolchain for tests/test_cpp.py. Safe to re-run: pip skips what is already there.
# The demo needs less: scripts/demo.sh installs [export,demo] only, with no compiler.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]"
if ! command -v cmake >/dev/null 2>&1 || ! command -v g++ >/dev/null 2>&1 || ! command -v make >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq cmake g++ make >/dev/null
  else
    echo "setup: cmake, g++ and make are needed for tests/test_cpp.py; install them" >&2
    exit 1
  fi
fi
