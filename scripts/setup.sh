#!/usr/bin/env bash
# Set up .venv for the TESTS on a fresh machine: torch/torchvision (taken from this
# machine's disk where it has them), the package with every extra ([dev]), and a C++
# toolchain for tests/test_cpp.py. Safe to re-run: pip skips what is already there.
# The demo needs less: scripts/demo.sh installs [export,demo] only, with no compiler.
#
# Versions come from constraints.txt (what the suite last ran green with). Environment:
#   GRADCAM_VENV         the venv folder (default .venv)
#   GRADCAM_CONSTRAINTS  a constraints file (default constraints.txt); set it empty for the
#                        newest versions pyproject.toml allows (torch stays at 2.14.1)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${GRADCAM_VENV:-.venv}
CONSTRAINTS=${GRADCAM_CONSTRAINTS-constraints.txt}
pins=(--upgrade --upgrade-strategy eager)  # newest: an existing venv moves up too
if [ -n "$CONSTRAINTS" ]; then
  pins=(-c "$CONSTRAINTS")
fi
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "torch==2.14.1" "torchvision==0.29.1"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "${pins[@]}" -e ".[dev]"
# a real tritonserver for tests/test_triton_server.py: nvidia-pytriton ships the 2.51 binary, its libraries
# and the python backend. --no-deps: its Python package pins numpy<2; the binary needs no numpy (the models
# run in a numpy-1 environment of their own, tests/triton_server.py). The version is constraints.txt's.
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps "$(grep -i '^nvidia-pytriton==' constraints.txt)"
if ! command -v cmake >/dev/null 2>&1 || ! command -v g++ >/dev/null 2>&1 || ! command -v make >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq cmake g++ make >/dev/null
  else
    echo "setup: cmake, g++ and make are needed for tests/test_cpp.py; install them" >&2
    exit 1
  fi
fi
# --- C++ dependencies of cpp/ (gradcam_ort, gradcam_run) and tests/test_cpp.py -------------
# OpenCV and nlohmann-json from the distribution. ONNX Runtime's library is the one in the
# onnxruntime wheel (.venv); its C++ headers come from Debian 13's libonnxruntime-dev. Debian 12
# has no ONNX Runtime package, so there the Debian 13 package is downloaded through a temporary
# apt configuration and unpacked into build/cpp-deps/onnxruntime-dev: nothing is installed
# system-wide. Headers older than the wheel's library are fine (cpp/cmake/onnxruntime.cmake checks).
cpp_packages=""
dpkg -s libopencv-dev >/dev/null 2>&1 || cpp_packages="$cpp_packages libopencv-dev"
dpkg -s nlohmann-json3-dev >/dev/null 2>&1 || cpp_packages="$cpp_packages nlohmann-json3-dev"
if command -v apt-cache >/dev/null 2>&1 && apt-cache show libonnxruntime-dev >/dev/null 2>&1; then
  dpkg -s libonnxruntime-dev >/dev/null 2>&1 || cpp_packages="$cpp_packages libonnxruntime-dev"  # Debian 13+
fi
if [ -n "$cpp_packages" ]; then
  if command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq --no-install-recommends $cpp_packages >/dev/null
  else
    echo "setup: install$cpp_packages (OpenCV and nlohmann-json development files) for tests/test_cpp.py" >&2
    exit 1
  fi
fi
ort_headers=build/cpp-deps/onnxruntime-dev/usr/include/onnxruntime/onnxruntime_cxx_api.h
if [ ! -f /usr/include/onnxruntime/onnxruntime_cxx_api.h ] && [ ! -f "$ort_headers" ]; then
  apt_dir="$PWD/build/cpp-deps/apt"
  mkdir -p "$apt_dir/etc" "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
  # the machine's own Debian mirror (deb822 or one-line sources), suite trixie
  mirror=$(cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
    | awk '/^URIs:/ {print $2} /^deb / {for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {print $i; break}}' \
    | grep -v security | head -n 1) || true  # a missing sources.list is fine
  printf 'Types: deb\nURIs: %s\nSuites: trixie\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    "${mirror:-http://deb.debian.org/debian}" >"$apt_dir/etc/trixie.sources"
  : >"$apt_dir/status"
  apt_opts=(-o "Dir::Etc::SourceList=/dev/null" -o "Dir::Etc::SourceParts=$apt_dir/etc"
    -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache" -o "Dir::State::status=$apt_dir/status"
    -o "Dir::Etc::Preferences=/dev/null" -o "Dir::Etc::PreferencesParts=/dev/null"
    -o "APT::Architectures::=$(dpkg --print-architecture)" -o "Acquire::Languages=none" -o "APT::Sandbox::User=root")
  apt-get "${apt_opts[@]}" -qq update
  (cd build/cpp-deps && apt-get "${apt_opts[@]}" -qq download libonnxruntime-dev)
  dpkg -x build/cpp-deps/libonnxruntime-dev_*.deb build/cpp-deps/onnxruntime-dev
  test -f "$ort_headers"
fi
# --- A real browser for the page tests (tests/test_report.py): Debian's chromium and its driver
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      chromium chromium-driver >/dev/null
  else
    echo "setup: install chromium and chromium-driver (Debian's) for tests/test_report.py" >&2
    exit 1
  fi
fi
