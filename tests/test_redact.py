"""API keys never reach a log line: a real `voxgate serve` with uvicorn's own access log, hit by
clients that put the key in the URL (as browsers must for WebSockets); plus the filter itself."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import subprocess
import sys
import time

import httpx
import pytest
import websockets

from voxgate.server.redact import RedactingFilter, redact

SECRET = "sk-live-0123456789abcdef"


@pytest.mark.parametrize("line,kept", [
    (f'127.0.0.1:5 - "WebSocket /v1/asr?api_key={SECRET}&x=1" [accepted]', "x=1"),
    (f'"GET /health?a=1&api_key={SECRET} HTTP/1.1" 200', "a=1"),
    (f"/hook?token={SECRET}", "/hook"),
    (f"authorization: Bearer {SECRET}", "authorization"),
    (f"Authorization={SECRET}", "Authorization"),
    (f'{{"x-api-key": "{SECRET}"}}', "x-api-key"),
    (f"(('authorization', 'Bearer {SECRET}'), ('x-api-key', '{SECRET}'))", "authorization"),
])
def test_redact_forms(line, kept):
    out = redact(line)
    assert SECRET not in out and "***" in out and kept in out


def test_filter_rewrites_arguments_for_any_formatter():
    """uvicorn's access formatter unpacks record.args itself: they are redacted in place."""
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1,
                               '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:1", "GET", f"/v1/asr?api_key={SECRET}", "1.1", 101),
                               None)
    assert RedactingFilter().filter(record) is True
    assert record.args[2] == "/v1/asr?api_key=***"
    assert SECRET not in record.getMessage()
    assert redact("nothing secret: 12 tokens, max_tokens=768") == \
        "nothing secret: 12 tokens, max_tokens=768"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_serve_logs_never_show_the_key(tmp_path):
    port = _free_port()
    env = {**os.environ, "VOXGATE_DATA_DIR": str(tmp_path), "VOXGATE_OFFLINE": "true",
           "VOXGATE_API_KEYS": SECRET}
    proc = subprocess.Popen(
        [sys.executable, "-m", "voxgate.cli", "serve", "--port", str(port), "--grpc-port", "0"],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                httpx.get(f"{base}/health", timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, "serve did not start"
                time.sleep(0.2)
        assert httpx.get(f"{base}/health?api_key={SECRET}").status_code == 200
        assert httpx.get(f"{base}/v1/templates?api_key={SECRET}").status_code == 401

        async def live() -> dict:
            async with websockets.connect(f"ws://127.0.0.1:{port}/v1/asr?api_key={SECRET}",
                                          open_timeout=30) as ws:
                await ws.send(json.dumps({"type": "config", "language": "en"}))
                ready = json.loads(await asyncio.wait_for(ws.recv(), 60))
                await ws.send(json.dumps({"type": "end"}))
                return ready

        assert asyncio.run(live())["type"] == "ready"
    finally:
        proc.terminate()
        try:
            output = proc.communicate(timeout=30)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            output = proc.communicate(timeout=10)[0]
    text = output.decode(errors="replace")
    assert "/v1/asr?api_key=***" in text and "/health?api_key=***" in text, text
    assert SECRET not in text, text
