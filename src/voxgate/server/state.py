"""What the running server shares between routers: settings, models, components, checks."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..config import Settings
from ..engines.manager import ModelManager

__all__ = ["AppState", "Component", "ReadyCheck"]

# A readiness check returns (name, ok, detail).
ReadyCheck = Callable[[], Awaitable[tuple[str, bool, str]]]


class Component(Protocol):
    """A long-lived part of the server (queue, gRPC server, Wyoming server...)."""

    name: str

    async def start(self, state: "AppState") -> None: ...

    async def stop(self, state: "AppState") -> None: ...


@dataclass
class AppState:
    settings: Settings
    manager: ModelManager
    ready_checks: list[ReadyCheck] = field(default_factory=list)
    components: dict[str, Any] = field(default_factory=dict)

    def remove_ready_checks(self, *checks: ReadyCheck) -> None:
        """A stopped component takes its checks with it, so /ready reflects what runs now."""
        self.ready_checks[:] = [c for c in self.ready_checks if c not in checks]
