#!/usr/bin/env bash
# The main job, offline: transcribe a real recording (LibriVox, public domain) with timestamps,
# then the plain transcript with a schema-checked summary by the offline LLM (as a job would).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh all
clips=(/usr/share/pocketsphinx/test/data/librivox/*.wav)
workdir="$(mktemp -d)"
# Five consecutive LibriVox clips joined into one recording.
sox "${clips[@]}" "$workdir/sense_and_sensibility.wav"
.venv/bin/voxgate transcribe "$workdir/sense_and_sensibility.wav" --format srt
.venv/bin/voxgate transcribe "$workdir/sense_and_sensibility.wav" --format text \
  --summary meeting_notes_v1
