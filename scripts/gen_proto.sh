#!/usr/bin/env bash
# Regenerate voxgate's own gRPC code from proto/ (committed under src/voxgate/proto/).
#
#   scripts/gen_proto.sh            # writes src/voxgate/proto/
#   scripts/gen_proto.sh OUT_DIR    # writes OUT_DIR/ instead (tests compare it to the committed files)
#
# Uses grpcio-tools (dev extra, pinned so regeneration is byte-for-byte reproducible). protoc
# writes "from voxgate.v1 import ..." in the *_pb2_grpc.py module; that import is rewritten to a
# relative one so the generated package lives inside voxgate without a top-level voxgate.v1.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$root/src/voxgate/proto}"
python="${PYTHON:-$root/.venv/bin/python}"
[ -x "$python" ] || python=python3
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
(cd "$root/proto" && "$python" -m grpc_tools.protoc -I . --python_out="$tmp" \
    --grpc_python_out="$tmp" --pyi_out="$tmp" voxgate/v1/voice_workflow.proto)
mkdir -p "$out"
for f in "$tmp"/voxgate/v1/*; do
  name="$(basename "$f")"
  sed -e 's/^from voxgate\.v1 import /from . import /' "$f" > "$out/$name"
done
if [ ! -f "$out/__init__.py" ]; then
  printf '%s\n' '"""Generated gRPC code of voxgate'"'"'s own protos (proto/voxgate/v1): scripts/gen_proto.sh."""' \
    > "$out/__init__.py"
fi
