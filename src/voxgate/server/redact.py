"""Secrets never reach a log line: API keys in URLs (``?api_key=``) and credential headers.

:class:`RedactingFilter` rewrites a record's message *and* its arguments (uvicorn's access
formatter reads the arguments themselves), so it works whichever formatter a handler uses.
:func:`install` puts it on every handler of the root and uvicorn loggers; the app does that at
start-up, after uvicorn has configured its own handlers, whichever way the server was launched.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any

__all__ = ["REDACTED", "RedactingFilter", "install", "redact"]

REDACTED = "***"
_NAMES = r"(?:api[_-]?key|x-api-key|authorization)"
# ?api_key=VALUE / &token=VALUE in URLs and query strings
_QUERY = re.compile(r"([?&;](?:api[_-]?key|access[_-]?token|token)=)[^&\s\"'#;]+",
                    re.IGNORECASE)
# authorization: Bearer VALUE, "x-api-key": "VALUE", ('authorization', 'Bearer VALUE')
_HEADER = re.compile(
    rf"((?<![\w-]){_NAMES}[\"']?\s*[:=,]\s*[\"']?(?:(?:bearer|basic|token)\s+)?)"
    r"[^\s\"'&,;)\]}]+", re.IGNORECASE)
_LOGGERS = ("", "uvicorn", "uvicorn.error", "uvicorn.access")


def redact(text: str) -> str:
    """``text`` with every API key / credential value replaced by ``***``."""
    if not text:
        return text
    return _HEADER.sub(rf"\g<1>{REDACTED}", _QUERY.sub(rf"\g<1>{REDACTED}", text))


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, bytes):
        return redact(value.decode("utf-8", "replace"))
    return value


class RedactingFilter(logging.Filter):
    """Redacts each record in place; never drops one."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_clean(a) for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: _clean(v) for k, v in record.args.items()}
        if record.exc_info and not record.exc_text:  # tracebacks may quote a URL too
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True


def install(loggers: Iterable[str] = _LOGGERS) -> None:
    """Add the filter to every handler of ``loggers`` that lacks it (idempotent)."""
    for name in loggers:
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(RedactingFilter())
