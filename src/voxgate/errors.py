"""Exception hierarchy.

Every error voxgate raises on purpose is a :class:`VoxgateError`. Leaves also inherit the
matching builtin (``ValueError``, ``RuntimeError``...) so callers that already catch builtins keep
working, the way onnx-asr does it. Front doors map these to HTTP / WebSocket / gRPC codes.
"""

from __future__ import annotations

__all__ = [
    "VoxgateError",
    "AudioError",
    "AudioTooLongError",
    "ModelError",
    "MissingExtraError",
    "EngineError",
    "ProtocolError",
    "JobError",
    "ConfigError",
    "TextError",
]


class VoxgateError(Exception):
    """Base of every deliberate voxgate error; ``str(err)`` is a one-line user message."""


class AudioError(VoxgateError, ValueError):
    """Input audio could not be read, decoded or is otherwise unusable."""


class AudioTooLongError(AudioError):
    """Decoded audio is longer than the limit of the door it came through (HTTP 413)."""

    def __init__(self, message: str, limit_s: float) -> None:
        super().__init__(message)
        self.limit_s = limit_s


class ModelError(VoxgateError, RuntimeError):
    """A model could not be resolved, verified or loaded, or violates its contract."""


class MissingExtraError(ModelError, ImportError):
    """An optional dependency is missing; the message names the pip extra that installs it."""

    def __init__(self, what: str, extra: str, cause: BaseException | None = None) -> None:
        detail = f" ({cause})" if cause else ""
        super().__init__(f"{what} needs an optional dependency{detail}: pip install 'voxgate[{extra}]'")
        self.extra = extra


class EngineError(VoxgateError, RuntimeError):
    """An engine failed while running. ``retryable`` says whether trying again may help."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class ProtocolError(VoxgateError, ValueError):
    """A client broke a wire protocol (bad config message, wrong frame type...)."""


class JobError(VoxgateError, RuntimeError):
    """A queued job failed or cannot be found."""


class ConfigError(VoxgateError, ValueError):
    """A setting or request option has an invalid value."""


class TextError(VoxgateError, ValueError):
    """Text to speak is unusable: empty, too long, or nothing in it the voice can say."""
