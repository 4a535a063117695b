#!/usr/bin/env bash
# Set up voxgate on a fresh Debian/Ubuntu machine with Python 3.11+: system packages, a venv
# in .venv and the package with the extras given as arguments (default: all).
# `--system` does only the Debian packages, `--python` only the venv: deploy/Dockerfile runs
# the two halves in its runtime and build stages (the same steps, one script).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/retry.sh
# pip resumes a dropped download this many times before the whole step is retried.
export PIP_RESUME_RETRIES="${PIP_RESUME_RETRIES:-20}"
mode=all
case "${1:-}" in --system|--python) mode="${1#--}"; shift ;; esac
extras="${1:-all}"
sudo_cmd=""
if [ "$(id -u)" != 0 ]; then sudo_cmd="sudo"; fi
# pocketsphinx-testdata: real LibriVox speech with transcripts (demo + tests);
# espeak-ng / festival + festvox-ru: text-to-speech voices; sox: audio checks in tests.
if [ "$mode" != python ]; then
    retry $sudo_cmd apt-get update -qq
    retry env DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends \
      pocketsphinx-testdata sox espeak-ng festival festvox-us-slt-hts festvox-ru >/dev/null
fi
if [ "$mode" = system ]; then exit 0; fi
if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
# The exact versions the test suite passed with (scripts/lock.sh re-resolves and re-tests them);
# as an environment variable it also pins the build backend in pip's isolated build env.
export PIP_CONSTRAINT="$PWD/requirements.lock"
retry .venv/bin/python -m pip install -q --upgrade pip
retry .venv/bin/python -m pip install -q -e ".[${extras}]"
