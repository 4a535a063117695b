"""Real servers for the jobs tests: uvicorn on a free loopback port, worker processes, receivers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from voxgate.audio import decode_audio, encode_wav
from voxgate.config import Settings

KEY = "test-key-123"
AUTH = {"X-API-Key": KEY}
WEBHOOK_SECRET = "test-webhook-secret"  # its own secret, not an API key
# the test receiver listens on loopback, which webhooks reach only when the operator allows it
WEBHOOK_SETTINGS = {"webhook_secret": WEBHOOK_SECRET, "webhook_allowed_hosts": ["127.0.0.1"]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serve_app(settings: Settings, manager: Any = None) -> Iterator[str]:
    """Run create_app(settings) under uvicorn in a thread; yields the base URL."""
    import uvicorn

    from voxgate.server import create_app

    port = free_port()
    app = create_app(settings, manager=manager)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:  # bounded start-up wait
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)


def start_worker(settings: Settings, name: str, *args: str) -> subprocess.Popen[bytes]:
    """``voxgate worker`` as a real separate process against ``settings.redis_url``."""
    env = {**os.environ, "VOXGATE_REDIS_URL": settings.redis_url,
           "VOXGATE_DATA_DIR": str(settings.data_dir), "VOXGATE_OFFLINE": "true",
           "VOXGATE_WORKER_HEARTBEAT_S": str(settings.worker_heartbeat_s),
           "VOXGATE_JOB_RETRIES": str(settings.job_retries),
           "VOXGATE_WEBHOOK_TIMEOUT_S": str(settings.webhook_timeout_s),
           "VOXGATE_WEBHOOK_MAX_ATTEMPTS": str(settings.webhook_max_attempts),
           "VOXGATE_WEBHOOK_SECRET": settings.webhook_secret,
           "VOXGATE_WEBHOOK_ALLOWED_HOSTS": ",".join(settings.webhook_allowed_hosts),
           "VOXGATE_API_KEYS": ",".join(settings.api_keys)}
    return subprocess.Popen([sys.executable, "-m", "voxgate.cli", "worker", "--name", name, *args],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wav_of(clips: list[Any], path: Path, repeat: int = 1) -> Path:
    audio = np.concatenate([c.audio for c in clips] * repeat)
    path.write_bytes(encode_wav(audio))
    return path


def submit(base: str, path: Path, **fields: Any) -> httpx.Response:
    data: dict[str, Any] = {k: v for k, v in fields.items() if v is not None}
    with path.open("rb") as handle:
        return httpx.post(f"{base}/v1/process", headers=AUTH, data=data, timeout=60,
                          files={"file": (path.name, handle, "audio/wav")})


def events(base: str, task_id: str, timeout: float = 240) -> Iterator[tuple[str, dict[str, Any]]]:
    """(event name, data) from the SSE endpoint until the stream ends."""
    with httpx.stream("GET", f"{base}/v1/status/{task_id}/events", headers=AUTH,
                      timeout=httpx.Timeout(timeout, connect=10)) as response:
        response.raise_for_status()
        name = "message"
        for line in response.iter_lines():
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                yield name, json.loads(line[5:])
                name = "message"


def wait_final(base: str, task_id: str, timeout: float = 240) -> dict[str, Any]:
    for name, data in events(base, task_id, timeout):
        if name == "result":
            return data
    raise AssertionError(f"no final event for {task_id}")


class Receiver:
    """A webhook receiver on loopback that records (headers, raw body) as each request arrives.

    ``replies``: (status, seconds before answering) for the first calls, e.g. a slow receiver
    that refuses twice; later calls get 204 at once.
    """

    def __init__(self, replies: list[tuple[int, float]] | None = None) -> None:
        self.calls: list[tuple[dict[str, str], bytes]] = []
        self.arrived = threading.Condition()
        replies = list(replies or [])
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server API
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with outer.arrived:
                    outer.calls.append(({k.lower(): v for k, v in self.headers.items()}, body))
                    outer.arrived.notify_all()
                    status, delay = replies.pop(0) if replies else (204, 0.0)
                threading.Event().wait(delay)  # a slow receiver
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, count: int, timeout: float = 30) -> list[tuple[dict[str, str], bytes]]:
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.calls) >= count, timeout=timeout)
        return list(self.calls)

    def close(self) -> None:
        self.server.shutdown()


def clip_audio(path: Path) -> np.ndarray:
    return decode_audio(path)
