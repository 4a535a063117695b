"""Logging for the app and the CLI: handlers configured once, context on every line.

Library code only calls ``logging.getLogger(__name__)``. The entry points (``voxgate serve``,
``voxgate worker``, the other CLI commands) call :func:`setup_logging` once; it puts one handler
on the root logger whose :class:`ContextFilter` adds the request id, task id, session id and
door of whatever is being served (context variables set by the doors' entry points with
:func:`bind`), so no log call has to pass them. ``VOXGATE_LOG__FORMAT=json`` writes one JSON
object per line (for log shippers); ``text`` (the default) stays readable on a terminal.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import IO, Any, ParamSpec, TypeVar

from .config import Settings
from .tracing import current_trace_id

__all__ = ["CONTEXT_FIELDS", "ContextFilter", "JsonFormatter", "TextFormatter", "bind",
           "bound", "current", "in_context", "new_request_id", "request_id_or_new",
           "setup_logging"]

P = ParamSpec("P")
T = TypeVar("T")

CONTEXT_FIELDS = ("request_id", "task_id", "session_id", "door")
_VARS: dict[str, contextvars.ContextVar[str | None]] = {
    name: contextvars.ContextVar(f"voxgate_log_{name}", default=None) for name in CONTEXT_FIELDS}
# a client's X-Request-ID is kept only when it is short and plain (no log or header injection)
_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/+=-]{0,127}")
_HANDLER_MARK = "_voxgate_handler"


def new_request_id() -> str:
    """A fresh request id (32 hex digits)."""
    return uuid.uuid4().hex


def request_id_or_new(candidate: str | None) -> str:
    """``candidate`` when it is a plausible request id (1-128 characters of letters, digits and
    ``._:@/+=-``), else a fresh one: a client never writes arbitrary text into our logs."""
    if candidate and _REQUEST_ID.fullmatch(candidate):
        return candidate
    return new_request_id()


def bind(**fields: str | None) -> None:
    """Set context fields (``request_id``, ``task_id``, ``session_id``, ``door``) for the rest of
    the current task or thread (and the tasks and threads it starts)."""
    for name, value in fields.items():
        _VARS[name].set(value)


@contextmanager
def bound(**fields: str | None) -> Iterator[None]:
    """Like :func:`bind`, restoring the previous values on exit (for code that runs many
    requests or jobs on one thread, like a queue worker)."""
    tokens = [(_VARS[name], _VARS[name].set(value)) for name, value in fields.items()]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def in_context(fn: Callable[P, T]) -> Callable[P, T]:
    """``fn`` to hand to another thread (``run_in_executor``, ``threading.Thread``, a pool's
    ``map``) so that it runs with the caller's context fields, as ``asyncio.to_thread`` does:
    a pool thread otherwise logs without the request, task or session id it works for.

    The caller's context is copied now; every call runs in a fresh copy of it, so calls on
    several threads at once never share one (a ``Context`` cannot be entered twice)."""
    context = contextvars.copy_context()

    def run(*args: P.args, **kwargs: P.kwargs) -> T:
        return context.copy().run(fn, *args, **kwargs)

    return run


def current() -> dict[str, str]:
    """The context fields set now (unset ones left out)."""
    return {name: value for name, var in _VARS.items() if (value := var.get()) is not None}


class ContextFilter(logging.Filter):
    """Adds the context fields (and the trace id when tracing is on) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in _VARS.items():
            if not hasattr(record, name):
                setattr(record, name, var.get())
        if not hasattr(record, "trace_id"):
            record.trace_id = current_trace_id()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, context fields, exception."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in (*CONTEXT_FIELDS, "trace_id"):
            value = getattr(record, name, None)
            if value:
                doc[name] = value
        if record.exc_info:
            doc["exc_info"] = record.exc_text or self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exc_info"] = record.exc_text
        return json.dumps(doc, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """``LEVEL logger: message [request_id=... door=...]``: the context only when known."""

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = " ".join(f"{name}={value}" for name in CONTEXT_FIELDS
                           if (value := getattr(record, name, None)))
        if not context:
            return line
        head, newline, rest = line.partition("\n")  # keep a traceback below the first line
        return f"{head} [{context}]{newline}{rest}"


def _use_json(settings: Settings, stream: IO[str]) -> bool:
    fmt = settings.log.format
    if fmt == "auto":
        return not (hasattr(stream, "isatty") and stream.isatty())
    return fmt == "json"


def setup_logging(settings: Settings, *, debug: bool = False, default_level: str = "WARNING",
                  voxgate_level: str | None = None, stream: IO[str] | None = None,
                  ) -> logging.Handler:
    """Configure the root logger once: one handler (replacing one an earlier call put there),
    with the context filter and the format of ``settings.log.format``. ``default_level`` is the
    root level; the ``voxgate`` loggers log at ``settings.log.level`` if set, else at
    ``voxgate_level`` (a command's default), DEBUG with ``debug``. Returns the handler."""
    stream = stream if stream is not None else sys.stderr
    handler = logging.StreamHandler(stream)
    setattr(handler, _HANDLER_MARK, True)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if _use_json(settings, stream) else TextFormatter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else default_level)
    level = "DEBUG" if debug else (settings.log.level or voxgate_level)
    if level:
        logging.getLogger("voxgate").setLevel(level)
    return handler
