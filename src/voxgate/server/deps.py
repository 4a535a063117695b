"""Shared request plumbing: state lookup, API-key auth, streamed uploads with limits."""

from __future__ import annotations

import hmac
import logging
import os
import uuid
from pathlib import Path

from fastapi import HTTPException, Request, UploadFile, WebSocket, status

from ..config import Settings
from .state import AppState

__all__ = [
    "get_state",
    "key_is_valid",
    "api_key_from_headers",
    "require_api_key",
    "websocket_api_key_ok",
    "save_upload",
    "new_task_id",
    "UPLOAD_CHUNK",
]

logger = logging.getLogger(__name__)
UPLOAD_CHUNK = 1024 * 1024


def get_state(request: Request) -> AppState:
    return request.app.state.voxgate


def key_is_valid(settings: Settings, presented: str | None) -> bool:
    """Constant-time comparison against every configured key (auth off: always True)."""
    if not settings.api_keys:
        return True
    if not presented:
        return False
    ok = False
    for key in settings.api_keys:
        ok |= hmac.compare_digest(presented.encode(), key.encode())
    return ok


def api_key_from_headers(headers: object) -> str | None:
    """``X-API-Key: k`` or ``Authorization: Bearer k``."""
    get = getattr(headers, "get")
    key = get("x-api-key")
    if key:
        return key.strip()
    auth = get("authorization") or ""
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


async def require_api_key(request: Request) -> None:
    """FastAPI dependency: 401 with a JSON detail unless a valid key is presented."""
    settings = get_state(request).settings
    if not key_is_valid(settings, api_key_from_headers(request.headers)):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, detail="invalid or missing API key",
                            headers={"WWW-Authenticate": "Bearer"})


def websocket_api_key_ok(websocket: WebSocket, settings: Settings) -> bool:
    """WebSocket auth: the same headers, or ``?api_key=`` for browsers that cannot set headers."""
    presented = api_key_from_headers(websocket.headers) or websocket.query_params.get("api_key")
    return key_is_valid(settings, presented)


def new_task_id() -> str:
    """Task ids are random UUIDs: they name directories, so user input never does."""
    return str(uuid.uuid4())


async def save_upload(upload: UploadFile, directory: Path, max_bytes: int,
                      allowed_extensions: frozenset[str] | None = None) -> Path:
    """Stream an upload to ``directory/raw.<ext>`` in 1 MiB chunks, enforcing ``max_bytes``.

    The client's filename contributes only a sanitised extension; 413 as soon as the limit is
    passed (the partial file is removed), 400 for an empty upload.
    """
    declared = getattr(upload, "size", None)
    if declared is not None and declared > max_bytes:
        raise HTTPException(status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
                            detail=f"file is larger than the {max_bytes // (1024 * 1024)} MB limit")
    ext = Path(upload.filename or "").suffix.lower().lstrip(".")
    if not ext.isalnum() or len(ext) > 5:
        ext = "bin"
    if allowed_extensions is not None and ext not in allowed_extensions:
        raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
                            detail=f"file type .{ext} is not accepted; allowed: "
                                   f"{', '.join(sorted(allowed_extensions))}")
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"raw.{ext}"
    written = 0
    try:
        with target.open("wb") as out:
            while chunk := await upload.read(UPLOAD_CHUNK):
                written += len(chunk)
                if written > max_bytes:
                    raise HTTPException(
                        status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
                        detail=f"file is larger than the {max_bytes // (1024 * 1024)} MB limit")
                out.write(chunk)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    if written == 0:
        target.unlink(missing_ok=True)
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail="uploaded file is empty")
    os.chmod(target, 0o600)
    return target
