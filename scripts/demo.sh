#!/usr/bin/env bash
# Set up (if needed) and run the offline demo: real ImageNet EfficientNet-Lite0, exported and explained.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/gradcam demo "$@"
