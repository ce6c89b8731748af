#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh  # GRADCAM_VENV, GRADCAM_CONSTRAINTS: see there
VENV=${GRADCAM_VENV:-.venv}
# the serve-only venv of tests/test_serve_venv.py installs through the same constraints
export GRADCAM_CONSTRAINTS=${GRADCAM_CONSTRAINTS-$PWD/constraints.txt}
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}  # see tests/conftest.py
# two workers: tracing and exporting are single-threaded Python, the suite is mostly that
exec "$VENV/bin/python" -m pytest -q -n 2 --dist loadgroup "$@"
