#!/usr/bin/env bash
# Set up kame on a fresh Debian/Ubuntu machine: system packages, a virtual environment, the package.
# Idempotent: run it again to update. Needs Python 3.11 or 3.12 and (for apt) root or sudo.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
APT_PACKAGES=(espeak-ng sox libsndfile1 cmake g++ chromium chromium-driver)

if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    missing=()
    for pkg in "${APT_PACKAGES[@]}"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "==> apt-get install ${missing[*]}"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi
else
    echo "warning: no apt-get; install ${APT_PACKAGES[*]} with your package manager" >&2
fi

# The environment takes about 8.5 GB (torch and its CUDA libraries); pip fails midway without it.
NEED_GB=10
if [ ! -x .venv/bin/python ]; then
    free_gb=$(df -Pk . | awk 'NR == 2 {print int($4 / 1048576)}')
    if [ "${free_gb:-0}" -lt "$NEED_GB" ]; then
        echo "error: $free_gb GB free on the disk holding $(pwd); the environment needs about $NEED_GB GB. Free some space (old clones, pip caches) and rerun." >&2
        exit 1
    fi
    echo "==> creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# llama-cpp-python compiles llama.cpp from source; the multimodal part is not needed. GGML_NATIVE=OFF:
# a -march=native build died with SIGILL in decode on this machine (its CPU advertises AMX, AVX512-FP16).
export CMAKE_ARGS="${CMAKE_ARGS:--DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF}"
echo "==> pip install -e .[dev] (first run: torch download and a llama.cpp build, several minutes)"
.venv/bin/python -m pip install -q -e ".[dev]"
echo "==> kame is installed: $(.venv/bin/kame --help | head -1)"
