#!/usr/bin/env bash
# Set up everything the tests need on a fresh machine, then run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh all,dev
# The Parakeet tests export a tiny model with PyTorch (CPU build; pinned so pip takes the
# local CPU wheel instead of GBs of CUDA packages).
.venv/bin/python -m pip install -q -c requirements.lock torch==2.13.0
.venv/bin/python -m pytest -q --durations=15 "$@"
