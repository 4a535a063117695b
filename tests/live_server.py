"""A real voxgate server on loopback for the live-transcription tests (WebSocket + gRPC).

uvicorn runs the app in a background thread with its own event loop; the lifespan starts the
streaming service and the Riva-compatible gRPC server on free ports. The models come from the
session ``manager`` fixture, so they load once for the whole test run.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

API_KEY = "live-test-key"


@dataclass
class LiveServer:
    settings: Any
    state: Any
    loop: asyncio.AbstractEventLoop
    http_port: int
    grpc_port: int

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.http_port}/v1/asr"

    @property
    def grpc_uri(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

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


def start_live_server(settings: Any, manager: Any) -> Iterator[LiveServer]:
    import uvicorn

    from voxgate.server.app import create_app
    from voxgate.server.grpc_riva import RivaGrpcServer
    from voxgate.server.ws import StreamingComponent

    grpc_server = RivaGrpcServer(settings, port=0)
    app = create_app(settings, manager, components=[StreamingComponent(settings), grpc_server])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                           lifespan="on", ws_max_size=16 * 1024 * 1024))
    loop_box: dict[str, asyncio.AbstractEventLoop] = {}

    def run() -> None:
        loop = asyncio.new_event_loop()
        loop_box["loop"] = loop
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.serve())

    thread = threading.Thread(target=run, name="voxgate-live-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("voxgate test server did not start")
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield LiveServer(settings, app.state.voxgate, loop_box["loop"], port, grpc_server.bound_port)
    finally:
        server.should_exit = True
        thread.join(30)


def live_settings(tmp_path: Any, **overrides: Any) -> Any:
    from voxgate.config import Settings, StreamingSettings

    streaming = StreamingSettings(idle_timeout_s=3.0, max_frame_bytes=64 * 1024)
    values: dict[str, Any] = dict(data_dir=tmp_path, offline=True, api_keys=[API_KEY],
                                  max_streams=2, grpc_port=0, streaming=streaming)
    values.update(overrides)
    return Settings(_env_file=None, **values)
