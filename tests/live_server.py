"""The one way tests start a real voxgate server on loopback.

uvicorn serves the app on a socket bound to 127.0.0.1:<free port> before it starts (no race for
the port), in a background thread with its own event loop; ``serve_app`` returns once uvicorn
has run the app's lifespan, i.e. every component (streaming service, gRPC, Wyoming) has started.
Tests talk to it with the clients users use (``openai``, ``websockets``, ``nvidia-riva-client``,
``wyoming``, ``httpx``). The models come from the session ``manager`` fixture, so they load
once for the whole test run.

- ``serve_app(app)``: context manager for any app built by ``create_app`` (OpenAI, Wyoming tests);
- ``start_live_server(settings, manager)``: the shared live-transcription server (WebSocket +
  Riva gRPC) behind conftest's session fixture ``live``, with ``live_settings``;
- ``tls_grpc_server(live, dir)``: a TLS Riva gRPC server beside it (self-signed certificate).
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI

API_KEY = "live-test-key"


@dataclass
class LiveServer:
    app: FastAPI
    port: int
    loop: asyncio.AbstractEventLoop
    grpc_port: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def http_port(self) -> int:
        return self.port

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/asr"

    @property
    def grpc_uri(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def state(self) -> Any:
        return self.app.state.voxgate

    @property
    def settings(self) -> Any:
        return self.state.settings

    @property
    def streaming(self) -> Any:
        return self.state.components["streaming"]

    def call(self, coro: Any, timeout: float = 30.0) -> Any:
        """Run a coroutine on the server's loop (start extra components, inspect state)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def wait_for(self, condition: Callable[[], bool], timeout: float = 10.0) -> bool:
        """Bounded wait for server-side state to settle (e.g. a vanished client's cleanup)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return True
            time.sleep(0.05)
        return condition()


class _Server(uvicorn.Server):
    """uvicorn.Server that signals when its startup (lifespan included) is over."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.startup_done = threading.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().startup(sockets=sockets)
        finally:
            self.startup_done.set()


@contextmanager
def serve_app(app: FastAPI, start_timeout_s: float = 60.0, **config: Any) -> Iterator[LiveServer]:
    """Serve ``app`` on 127.0.0.1:<free port> until the block ends (``config``: uvicorn.Config)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = _Server(uvicorn.Config(app, log_level="warning", lifespan="on", **config))
    loop = asyncio.new_event_loop()

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(server.serve(sockets=[sock]))
        finally:
            server.startup_done.set()  # a failed start must not leave the caller waiting
            loop.close()

    thread = threading.Thread(target=run, name="voxgate-live-server", daemon=True)
    thread.start()
    if not server.startup_done.wait(start_timeout_s) or not server.started:
        server.should_exit = True
        thread.join(10)
        sock.close()
        raise RuntimeError("uvicorn did not start (see the log above)")
    try:
        yield LiveServer(app, sock.getsockname()[1], loop)
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def start_live_server(settings: Any, manager: Any) -> Iterator[LiveServer]:
    """The live-transcription server: streaming service + Riva gRPC on free ports."""
    from voxgate.server.app import create_app, uvicorn_options
    from voxgate.server.grpc_riva import RivaGrpcServer
    from voxgate.server.live_streams import StreamingComponent

    grpc_server = RivaGrpcServer(settings, port=0)
    app = create_app(settings, manager, components=[StreamingComponent(settings), grpc_server])
    with serve_app(app, ws_max_size=uvicorn_options(settings)["ws_max_size"]) as live:
        live.grpc_port = grpc_server.bound_port
        yield live


def start_agent_server(settings: Any, manager: Any) -> Iterator[LiveServer]:
    """A live server with the voice agent: streaming service, agent service, gRPC (Riva +
    VoiceWorkflow) and the HTTP/WebSocket doors, on free ports."""
    from voxgate.server.agent_doors import AgentComponent
    from voxgate.server.app import create_app, uvicorn_options
    from voxgate.server.grpc_riva import RivaGrpcServer
    from voxgate.server.live_streams import StreamingComponent

    grpc_server = RivaGrpcServer(settings, port=0)
    app = create_app(settings, manager, components=[
        StreamingComponent(settings), AgentComponent(settings), grpc_server])
    with serve_app(app, ws_max_size=uvicorn_options(settings)["ws_max_size"]) as live:
        live.grpc_port = grpc_server.bound_port
        yield live


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A fresh self-signed certificate for localhost / 127.0.0.1 and its key, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@contextmanager
def tls_grpc_server(live: LiveServer, directory: Path) -> Iterator[tuple[int, Path]]:
    """A second Riva gRPC server of ``live``, on TLS with a fresh self-signed certificate;
    yields its port and the certificate (the client's root). Skips without ``cryptography``."""
    import pytest

    pytest.importorskip("cryptography", reason="cryptography makes the test certificate")
    from voxgate.server.grpc_riva import RivaGrpcServer

    cert, key = self_signed(directory)
    settings = live.settings.model_copy(update={"grpc_tls_cert": cert, "grpc_tls_key": key})
    server = RivaGrpcServer(settings, port=0)
    live.call(server.start(live.state))
    try:
        yield server.bound_port, cert
    finally:
        live.call(server.stop(live.state))


def call_with_a_mute_client(rpc: Callable[[Iterator[Any]], Any]) -> BaseException:
    """Open a client-streaming gRPC call whose client never sends a message; return the error
    the server ends it with (the call must fail: a mute client may hold nothing forever)."""
    release = threading.Event()

    def mute() -> Iterator[Any]:
        release.wait(60)
        return
        yield  # a generator that yields nothing

    try:
        list(rpc(mute()))
    except Exception as exc:  # noqa: BLE001 - the caller checks which error it is
        return exc
    finally:
        release.set()
    raise AssertionError("the server kept a mute client's call open until it ended")


def live_settings(tmp_path: Any, **overrides: Any) -> Any:
    from voxgate.config import Settings, StreamingSettings

    streaming = StreamingSettings(idle_timeout_s=3.0, max_frame_bytes=64 * 1024)
    values: dict[str, Any] = dict(data_dir=tmp_path, offline=True, api_keys=[API_KEY],
                                  max_streams=2, grpc_port=0, streaming=streaming)
    values.update(overrides)
    return Settings(_env_file=None, **values)


def post_endless_chunked_upload(port: int, path: str, headers: dict[str, str],
                                fields: dict[str, str], cap_bytes: int = 24 * 2**20,
                                ) -> tuple[bytes, int]:
    """POST a chunked multipart body (no Content-Length) whose file part keeps growing.

    Sends 64 kB chunks until the server answers (or refuses more bytes), ``cap_bytes`` at most,
    then ends the body; returns (the raw response head and body, bytes sent). A server that
    enforces its upload limit on the streamed bytes answers long before the cap.
    """
    import os

    boundary = "voxgate-test-boundary"
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sock.sendall((f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}Transfer-Encoding: chunked"
                  f"\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n\r\n").encode())

    def chunk(data: bytes) -> bytes:
        return f"{len(data):x}\r\n".encode() + data + b"\r\n"

    parts = "".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
                    for k, v in fields.items())
    parts += (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
              'filename="big.wav"\r\nContent-Type: audio/wav\r\n\r\n')
    answer: list[bytes] = []

    def read() -> None:
        data = b""
        try:
            while b"\r\n\r\n" not in data or len(data) < data.find(b"\r\n\r\n") + 5:
                got = sock.recv(65536)
                if not got:
                    break
                data += got
        except OSError:
            pass
        answer.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    sent = 0
    try:
        sock.sendall(chunk(parts.encode()))
        while not answer and sent < cap_bytes:
            sock.sendall(chunk(os.urandom(64 * 1024)))
            sent += 64 * 1024
        if not answer:
            sock.sendall(chunk(f"\r\n--{boundary}--\r\n".encode()) + b"0\r\n\r\n")
    except OSError:
        pass  # the server stopped reading and closed: its answer is already on the way
    reader.join(120)
    sock.close()
    return (answer[0] if answer else b""), sent
