"""The session-service mixin: /ready and /metrics follow a component's start and stop."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

from voxgate.config import Settings
from voxgate.server.session_component import SessionComponent
from voxgate.server.state import AppState


class _Service:
    def __init__(self) -> None:
        self.started = self.stopped = False

    async def start(self, state: Any = None) -> None:
        self.started = True

    async def stop(self, state: Any = None) -> None:
        self.stopped = True


class _Component(SessionComponent, _Service):
    async def _ready(self) -> tuple[str, bool, str]:
        return "demo", True, "1/2 demo sessions"

    def _metrics(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        yield GaugeMetricFamily("voxgate_demo_sessions_active", "demo", value=1)


def test_component_reports_while_running_and_leaves_ready_when_stopped() -> None:
    from prometheus_client import generate_latest

    from voxgate.server.metrics import metrics_of

    state = AppState(settings=Settings(), manager=None)  # type: ignore[arg-type]
    component = _Component()
    asyncio.run(component.start(state))
    assert component.started
    assert [asyncio.run(check())[0] for check in state.ready_checks] == ["demo"]
    scraped = generate_latest(metrics_of(state).registry).decode()
    assert "voxgate_demo_sessions_active 1.0" in scraped

    asyncio.run(component.stop(state))
    assert component.stopped and state.ready_checks == []


def test_component_without_app_state_only_runs_the_service() -> None:
    component = _Component()
    asyncio.run(component.start(None))
    asyncio.run(component.stop(None))
    assert component.started and component.stopped
