"""HTTP / WebSocket / gRPC front doors. Nothing outside this package imports it."""

from .app import create_app, uvicorn_options

__all__ = ["create_app", "uvicorn_options"]
