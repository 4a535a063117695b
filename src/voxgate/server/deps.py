"""Shared request plumbing: state lookup, API-key auth, streamed uploads with limits."""

from __future__ import annotations

import asyncio
import errno
import hmac
import ipaddress
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from pathlib import Path
from typing import IO, Any

from fastapi import HTTPException, Request, UploadFile, WebSocket, status
from starlette.datastructures import UploadFile as StarletteUploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.types import Receive, Scope

from ..config import Settings
from .state import AppState

__all__ = [
    "get_state",
    "is_loopback_host",
    "key_is_valid",
    "api_key_from_headers",
    "require_api_key",
    "websocket_api_key_ok",
    "save_upload",
    "UploadRequest",
    "discard_spooled",
    "disk_full",
    "is_disk_full",
    "new_task_id",
    "UPLOAD_CHUNK",
]

logger = logging.getLogger(__name__)
UPLOAD_CHUNK = 1024 * 1024


def is_loopback_host(host: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1): reachable from this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


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


def presented_key(x_api_key: str | None, authorization: str | None, *,
                  bare_authorization: bool = False) -> str | None:
    """The one rule for reading a key off a request, whatever the door: ``X-API-Key: k`` first,
    else ``Authorization: Bearer k`` (gRPC also takes a bare ``authorization: k``, as Riva's
    clients send it)."""
    if x_api_key and x_api_key.strip():
        return x_api_key.strip()
    scheme, _, token = (authorization or "").strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    if bare_authorization and scheme and not token:
        return scheme
    return None


def api_key_from_headers(headers: object) -> str | None:
    """``X-API-Key: k`` or ``Authorization: Bearer k`` from HTTP / WebSocket headers."""
    get = getattr(headers, "get")
    return presented_key(get("x-api-key"), get("authorization"))


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


def _too_large(max_bytes: int) -> HTTPException:
    return HTTPException(status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
                         detail=f"file is larger than the {max_bytes // (1024 * 1024)} MB limit "
                                "(VOXGATE_MAX_UPLOAD_MB)")


class _DiskParser(MultiPartParser):
    """Starlette's multipart parser, with each file written to a file we open (in the data
    directory) instead of a spooled temporary file under /tmp. Writes run in a thread pool."""

    def __init__(self, *args: Any, open_file: Callable[[], IO[bytes]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._open_file = open_file

    def on_headers_finished(self) -> None:
        super().on_headers_finished()
        upload = self._current_part.file
        if upload is not None:
            spooled = self._files_to_close_on_error.pop()  # the in-memory one just made
            spooled.close()
            upload.file = self._open_file()
            self._files_to_close_on_error.append(upload.file)  # type: ignore[arg-type]


class UploadRequest(Request):
    """A request that stops reading its body past ``max_bytes`` (413 as the bytes arrive, so a
    chunked body without ``Content-Length`` is cut off too) and whose multipart files are
    written once, straight into ``spool_dir``, off the event loop.

    ``named``: files get a name there (the caller moves them into place; see
    :func:`save_upload`); otherwise they are unnamed and vanish when closed.
    """

    def __init__(self, scope: Scope, receive: Receive, *, max_bytes: int, spool_dir: Path,
                 too_large: HTTPException, named: bool = False) -> None:
        super().__init__(scope, receive)
        self.max_bytes = max_bytes
        self.spool_dir = spool_dir
        self.named = named
        self._too_large = too_large

    async def stream(self) -> AsyncIterator[bytes]:
        received = 0
        async for chunk in super().stream():
            received += len(chunk)
            if received > self.max_bytes:
                raise self._too_large
            yield chunk

    def _open_spool(self) -> IO[bytes]:
        if self.named:
            return tempfile.NamedTemporaryFile(dir=self.spool_dir, prefix=".upload-",
                                               delete=False)
        return tempfile.TemporaryFile(dir=self.spool_dir, prefix=".upload-")

    async def _get_form(self, *, max_files: float = 1000, max_fields: float = 1000,
                        max_part_size: int = 1024 * 1024) -> Any:  # -> FormData
        content_type = self.headers.get("content-type", "")
        if self._form is None and content_type.lower().startswith("multipart/form-data"):
            await asyncio.to_thread(self.spool_dir.mkdir, parents=True, exist_ok=True)
            async with aclosing(self.stream()) as stream:
                parser = _DiskParser(self.headers, stream, max_files=max_files,
                                     max_fields=max_fields, max_part_size=max_part_size,
                                     open_file=self._open_spool)
                try:
                    self._form = await parser.parse()
                except MultiPartException as exc:
                    raise HTTPException(status.HTTP_400_BAD_REQUEST, detail=exc.message) from None
                except BaseException as exc:
                    for file in parser._files_to_close_on_error:  # named spools: remove them
                        _remove_spool(file)
                    if is_disk_full(exc):
                        raise disk_full() from exc
                    raise
        return await super()._get_form(max_files=max_files, max_fields=max_fields,
                                       max_part_size=max_part_size)


_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def is_disk_full(exc: BaseException) -> bool:
    """An OSError (or one it was raised from) saying the data directory's disk or quota is full."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _DISK_FULL_ERRNOS:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def disk_full() -> HTTPException:
    """507: the upload did not fit on the server's storage; the client's request was fine."""
    return HTTPException(status.HTTP_507_INSUFFICIENT_STORAGE,
                         detail="the server has no room left to store this upload (its data "
                                "directory is full); nothing was kept, retry later",
                         headers={"Retry-After": "60"})


def _remove_spool(file: Any) -> None:
    name = getattr(file, "name", None)
    if isinstance(name, str):
        Path(name).unlink(missing_ok=True)


async def discard_spooled(form: Any) -> None:
    """Remove the named spool files of a form that were not moved into place (then close it)."""
    uploads = [v for _, v in form.multi_items() if isinstance(v, StarletteUploadFile)]
    await asyncio.to_thread(lambda: [_remove_spool(u.file) for u in uploads])
    await form.close()


async def save_upload(upload: UploadFile, directory: Path, max_bytes: int,
                      allowed_extensions: frozenset[str] | None = None) -> Path:
    """Put an upload at ``directory/raw.<ext>``, enforcing ``max_bytes``.

    An upload that :class:`UploadRequest` already wrote to a named file in the data directory is
    moved into place (no second copy); any other is streamed there in 1 MiB chunks. Files are
    touched on a worker thread, never on the event loop. The client's filename contributes only
    a sanitised extension; 413 past the limit (the partial file is removed), 400 when empty.
    """
    declared = getattr(upload, "size", None)
    if declared is not None and declared > max_bytes:
        raise _too_large(max_bytes)
    ext = Path(upload.filename or "").suffix.lower().lstrip(".")
    if not ext.isalnum() or len(ext) > 5:
        ext = "bin"
    if allowed_extensions is not None and ext not in allowed_extensions:
        raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
                            detail=f"file type .{ext} is not accepted; allowed: "
                                   f"{', '.join(sorted(allowed_extensions))}")
    await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
    target = directory / f"raw.{ext}"
    spooled = getattr(upload.file, "name", None)
    if isinstance(spooled, str) and \
            Path(spooled).resolve().parent == directory.parent.resolve():
        written = upload.size or 0
        await asyncio.to_thread(shutil.move, spooled, target)  # a rename: same directory tree
    else:
        written = await _copy_upload(upload, target, max_bytes)
    if written > max_bytes:
        await asyncio.to_thread(target.unlink, missing_ok=True)
        raise _too_large(max_bytes)
    if written == 0:
        await asyncio.to_thread(target.unlink, missing_ok=True)
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail="uploaded file is empty")
    await asyncio.to_thread(os.chmod, target, 0o600)
    return target


async def _copy_upload(upload: UploadFile, target: Path, max_bytes: int) -> int:
    written = 0
    out = await asyncio.to_thread(target.open, "wb")
    try:
        while chunk := await upload.read(UPLOAD_CHUNK):
            written += len(chunk)
            if written > max_bytes:
                raise _too_large(max_bytes)
            await asyncio.to_thread(out.write, chunk)
    except BaseException as exc:
        try:
            out.close()
        except OSError:
            pass  # the flush of a full disk fails again; the file goes anyway
        target.unlink(missing_ok=True)
        if is_disk_full(exc):
            raise disk_full() from exc
        raise
    try:
        await asyncio.to_thread(out.close)  # flushes the last buffered bytes
    except OSError as exc:
        target.unlink(missing_ok=True)
        if is_disk_full(exc):
            raise disk_full() from exc
        raise
    return written
