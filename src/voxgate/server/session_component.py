"""A live-session service (streaming, translation, agent) as a server component.

Each of these services is started by the lifespan and must show up in ``/ready`` and
``/metrics`` while it runs, and leave ``/ready`` when it stops. The wiring was the same in
every component; it lives here once, so a new session kind only says *what* it reports.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from .state import AppState, ReadyCheck

__all__ = ["SessionComponent", "attach_to_app"]

logger = logging.getLogger(__name__)


def attach_to_app(state: AppState, ready: ReadyCheck,
                  metrics_source: Callable[[], Iterator[Any]] | None = None) -> Any:
    """Add ``ready`` to ``/ready`` and ``metrics_source`` to ``/metrics``; the app's
    :class:`~voxgate.server.metrics.Metrics`, or None without ``prometheus_client``
    (then ``/metrics`` is off anyway, and the component still serves)."""
    state.ready_checks.append(ready)
    try:
        from .metrics import metrics_of
    except ImportError:
        logger.debug("prometheus_client not installed; no metrics for %r", ready)
        return None
    metrics = metrics_of(state)
    if metrics_source is not None:
        metrics.add_source(metrics_source)
    return metrics


class SessionComponent:
    """Mixin placed before a session service class: ``start``/``stop`` also register and
    remove the subclass's ``_ready`` check and ``_metrics`` source.

    A service started without app state (a library user, a test) skips both."""

    async def _ready(self) -> tuple[str, bool, str]:  # pragma: no cover - overridden
        raise NotImplementedError

    def _metrics(self) -> Iterator[Any]:  # pragma: no cover - overridden
        raise NotImplementedError

    async def start(self, state: Any = None) -> None:
        await super().start(state)  # type: ignore[misc]
        if state is not None:
            attach_to_app(state, self._ready, self._metrics)

    async def stop(self, state: Any = None) -> None:
        if state is not None:
            state.remove_ready_checks(self._ready)
        await super().stop(state)  # type: ignore[misc]
