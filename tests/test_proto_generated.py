"""The committed gRPC code of ``proto/voxgate/v1`` is what ``scripts/gen_proto.sh`` generates.

The generated modules live in ``src/voxgate/proto/`` so users need no protoc at install time;
this test regenerates them into a temporary folder with the pinned grpcio-tools and compares
byte for byte, so an edited .proto without regenerated code (or hand-edited code) fails.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GENERATED = ROOT / "src" / "voxgate" / "proto"
NAMES = ("voice_workflow_pb2.py", "voice_workflow_pb2.pyi", "voice_workflow_pb2_grpc.py")


def _pinned_tools() -> str:
    match = re.search(r'"grpcio-tools==([^"]+)"', (ROOT / "pyproject.toml").read_text())
    if match is None:
        raise AssertionError("pyproject.toml pins no grpcio-tools version in the dev extra")
    return match.group(1)


def test_regenerating_gives_the_committed_files(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools (dev extra) is not installed")
    from importlib.metadata import version

    pinned = _pinned_tools()
    if version("grpcio-tools") != pinned:
        pytest.skip(f"grpcio-tools {version('grpcio-tools')} installed, the code is generated "
                    f"with the pinned {pinned} (pip install -e '.[dev]')")
    subprocess.run(["bash", str(ROOT / "scripts" / "gen_proto.sh"), str(tmp_path)], check=True,
                   env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"})
    for name in NAMES:
        fresh = (tmp_path / name).read_text()
        committed = (GENERATED / name).read_text()
        assert fresh == committed, f"src/voxgate/proto/{name} is stale: run scripts/gen_proto.sh"


def test_generated_code_serves_the_contract() -> None:
    """The committed code imports inside voxgate and describes the service as the .proto does."""
    from voxgate.proto import voice_workflow_pb2 as pb
    from voxgate.proto import voice_workflow_pb2_grpc as pb_grpc

    service = pb.DESCRIPTOR.services_by_name["VoiceWorkflow"]
    assert service.full_name == "voxgate.v1.VoiceWorkflow"
    converse = service.methods_by_name["Converse"]
    assert converse.client_streaming and converse.server_streaming
    client = pb.ClientMessage.DESCRIPTOR.oneofs_by_name["message"]
    assert [f.name for f in client.fields] == ["config", "audio", "text", "control"]
    server = pb.ServerMessage.DESCRIPTOR.oneofs_by_name["message"]
    assert {"transcript", "agent_text", "audio", "turn", "latency", "interruption",
            "error"} <= {f.name for f in server.fields}
    assert hasattr(pb_grpc, "VoiceWorkflowStub") and hasattr(pb_grpc, "VoiceWorkflowServicer")
    message = pb.ClientMessage(audio=pb.UserAudio(data=b"\x01\x00"))
    assert pb.ClientMessage.FromString(message.SerializeToString()).audio.data == b"\x01\x00"
