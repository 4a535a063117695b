"""The connection every Riva engine (ASR, TTS, MT) shares: where, how, and retries.

:class:`RivaOptions` says where the server is (URI, TLS, API key and extra metadata, per-call
timeout, retries); :class:`RivaChannel` opens the gRPC channel through the official
``riva.client.Auth`` and runs calls with exponential backoff on ``UNAVAILABLE`` (the server
restarting or not up yet). Other errors are not retried; every failure becomes an
:class:`~voxgate.errors.EngineError` naming the call, the server and the status.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..errors import ConfigError, EngineError, MissingExtraError

__all__ = ["RivaChannel", "RivaOptions"]

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(slots=True)
class RivaOptions:
    """Where and how to reach the Riva server (``Settings.riva`` fills it)."""

    uri: str = "localhost:50051"
    use_ssl: bool = False
    ssl_root_cert: str = ""
    api_key: str = ""
    metadata: list[tuple[str, str]] = field(default_factory=list)
    model: str = ""
    timeout_s: float = 30.0
    max_retries: int = 3
    backoff_s: float = 0.2
    language_code: str = "en-US"

    @classmethod
    def from_settings(cls, settings: Any) -> RivaOptions:
        riva = settings.riva
        pairs: list[tuple[str, str]] = []
        for item in riva.metadata:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"riva.metadata: expected key=value, got {item!r}")
            pairs.append((key.strip().lower(), value.strip()))
        return cls(uri=riva.uri, use_ssl=riva.use_ssl, ssl_root_cert=riva.ssl_root_cert,
                   api_key=riva.api_key, metadata=pairs, model=riva.model,
                   timeout_s=riva.timeout_s, max_retries=riva.max_retries,
                   backoff_s=riva.backoff_s)


class RivaChannel:
    """One gRPC channel to a Riva server, with auth metadata and the retry loop.

    ``what`` names the engine in the error raised when the ``grpc`` extra is missing;
    ``sleep`` is the wait between attempts (tests pass their own).
    """

    def __init__(self, options: RivaOptions, what: str, *,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        try:
            import grpc
            import riva.client
        except ImportError as exc:
            raise MissingExtraError(what, "grpc", exc) from exc
        self.options = options
        self.grpc = grpc
        metadata = list(options.metadata)
        if options.api_key:
            metadata.append(("authorization", f"Bearer {options.api_key}"))
        # our retry loop owns the backoff: keep gRPC's own reconnect backoff no longer than it
        first_ms = max(int(options.backoff_s * 1000), 10)
        channel_options = [
            ("grpc.initial_reconnect_backoff_ms", first_ms),
            ("grpc.min_reconnect_backoff_ms", first_ms),
            ("grpc.max_reconnect_backoff_ms", max(first_ms * 2 ** options.max_retries, 1000)),
        ]
        self.auth = riva.client.Auth(
            ssl_root_cert=options.ssl_root_cert or None, use_ssl=options.use_ssl,
            uri=options.uri, metadata_args=[list(m) for m in metadata] or None,
            options=channel_options)
        self._sleep = sleep
        self.calls = 0  # RPC attempts, retries included (observability and tests)

    @property
    def metadata(self) -> list[tuple[str, str]]:
        return self.auth.get_auth_metadata()

    def close(self) -> None:
        self.auth.channel.close()

    def with_retries(self, what: str, call: Callable[[], T]) -> T:
        """``call()``, retried with exponential backoff while the server is UNAVAILABLE."""
        grpc = self.grpc
        delay = self.options.backoff_s
        for attempt in range(self.options.max_retries + 1):
            self.calls += 1
            try:
                return call()
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else None
                detail = exc.details() if hasattr(exc, "details") else str(exc)
                if code == grpc.StatusCode.UNAVAILABLE and attempt < self.options.max_retries:
                    logger.warning("Riva %s at %s unavailable (%s); retry %d/%d in %.2fs", what,
                                   self.options.uri, detail, attempt + 1,
                                   self.options.max_retries, delay)
                    self._sleep(delay)
                    delay *= 2
                    continue
                retryable = code in (grpc.StatusCode.UNAVAILABLE,
                                     grpc.StatusCode.RESOURCE_EXHAUSTED,
                                     grpc.StatusCode.DEADLINE_EXCEEDED)
                name = code.name if code is not None else "error"
                raise EngineError(f"Riva {what} at {self.options.uri} failed: {name}: {detail}",
                                  retryable=retryable) from None
        raise EngineError(f"Riva {what}: no attempt made", retryable=True)  # max_retries < 0
