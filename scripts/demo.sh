#!/usr/bin/env bash
# Set up (if needed) and run the offline demo: real ImageNet EfficientNet-Lite0, exported and explained.
# Installs what the demo needs and no more: the package with [export,demo] into .venv (no root, no compiler).
# The demo's files go to ./gradcam-demo in the folder you run this from; the command it suggests
# at the end works as printed there (.venv/bin is not put on your PATH: `source .venv/bin/activate` does).
set -euo pipefail
HERE=$(pwd)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[export,demo]"
cd "$HERE"
exec "$ROOT/.venv/bin/gradcam" demo "$@"
