"""A real voxgate server on a free loopback port, run by uvicorn in a background thread.

Tests talk to it with the clients users use (``openai``, ``wyoming``, ``httpx``). The socket is
bound before uvicorn starts, so there is no race for the port; ``started`` is uvicorn's own flag
(set after the app's lifespan, i.e. every component, has started).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI


@dataclass
class LiveServer:
    app: FastAPI
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextmanager
def live_server(app: FastAPI, start_timeout_s: float = 60.0) -> Iterator[LiveServer]:
    """Serve ``app`` on 127.0.0.1:<free port> until the block ends."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    started = threading.Event()
    thread = threading.Thread(target=lambda: (server.run(sockets=[sock]), started.set()),
                              name="live-uvicorn", daemon=True)
    original_startup = server.startup

    async def startup(sockets=None) -> None:  # uvicorn's own signature
        await original_startup(sockets=sockets)
        started.set()

    server.startup = startup  # type: ignore[method-assign]
    thread.start()
    if not started.wait(start_timeout_s) or not server.started:
        server.should_exit = True
        thread.join(10)
        raise RuntimeError("uvicorn did not start (see the log above)")
    try:
        yield LiveServer(app, sock.getsockname()[1])
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
