#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}  # see tests/conftest.py
# two workers: tracing and exporting are single-threaded Python, the suite is mostly that
exec .venv/bin/python -m pytest -q -n 2 --dist loadgroup "$@"
