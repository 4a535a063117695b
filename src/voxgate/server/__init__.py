"""HTTP / WebSocket / gRPC front doors. Nothing outside this package imports it."""

from .app import create_app

__all__ = ["create_app"]
