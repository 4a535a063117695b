"""create_app(settings): one ASGI app; its lifespan owns the models and every component.

Routers stay thin (validate -> session/engine -> shape response). Long-lived parts (job queue,
gRPC server, Wyoming server) are components started and stopped here, in order.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

from fastapi import Depends, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from ..config import Settings
from ..engines.manager import ModelManager
from ..errors import AudioError, ConfigError, EngineError, ModelError, VoxgateError
from ..version import package_version
from .deps import api_key_from_headers, is_loopback_host, key_is_valid, require_api_key
from .redact import install as install_redaction
from .state import AppState, Component

__all__ = ["create_app", "uvicorn_options"]

logger = logging.getLogger(__name__)
_WEB_DIR = Path(__file__).resolve().parent.parent / "web"


def _components(settings: Settings) -> list[Component]:
    """The server's long-lived parts, in start order (later issues add theirs here)."""
    parts: list[Component] = []
    from .live_streams import StreamingComponent  # live ASR shared by every live door

    parts.append(StreamingComponent(settings))
    from .agent_doors import AgentComponent  # voice agent sessions (/v1/agent, VoiceWorkflow)

    parts.append(AgentComponent(settings))
    from .translation_state import TranslationComponent  # live translation (after streaming)

    parts.append(TranslationComponent(settings))
    if settings.grpc_port and importlib.util.find_spec("riva") is not None:  # extra "grpc"
        from .grpc_riva import RivaGrpcServer

        parts.append(RivaGrpcServer(settings))
    if settings.wyoming_uri:  # Wyoming speech-to-text (Home Assistant)
        from .wyoming import WyomingServer

        parts.append(WyomingServer(settings.wyoming_uri))
    if importlib.util.find_spec("rq") is not None:  # REST jobs (extra "queue")
        from .jobs_api import JobsComponent

        parts.append(JobsComponent(settings))
    return parts


def _error_status(exc: VoxgateError) -> int:
    if isinstance(exc, AudioError):
        return 415
    if isinstance(exc, ConfigError):
        return 400
    if isinstance(exc, ModelError):
        return 404
    if isinstance(exc, EngineError):
        return 503 if exc.retryable else 422
    return 400


def create_app(settings: Settings | None = None, manager: ModelManager | None = None,
               components: list[Component] | None = None) -> FastAPI:
    """Build the app. ``components`` overrides the default list (tests)."""
    settings = settings or Settings()
    owns_manager = manager is None  # a caller's manager outlives this app; ours does not
    state = AppState(settings=settings, manager=manager or ModelManager(settings))
    parts = _components(settings) if components is None else components

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not settings.api_keys and not is_loopback_host(settings.host):
            raise ConfigError("VOXGATE_API_KEYS is empty: refusing to serve without auth on "
                              f"{settings.host}; set keys or bind to 127.0.0.1")
        if not settings.api_keys:
            logger.warning("no API keys configured: auth is off (loopback only)")
        install_redaction()  # after uvicorn set up its handlers: access logs are covered too
        from ..tracing import configure_tracing, shutdown_tracing  # VOXGATE_TRACING__*

        if settings.tracing.enabled:
            configure_tracing(settings)
        started: list[Component] = []
        sweeper = asyncio.create_task(_sweep_models(state)) if settings.model_idle_ttl_s else None
        try:
            for part in parts:
                await part.start(state)
                started.append(part)
                state.components[part.name] = part
            yield
        finally:
            if sweeper:
                sweeper.cancel()
            for part in reversed(started):
                try:
                    await part.stop(state)
                except Exception:  # keep stopping the others; report this one
                    logger.exception("stopping %s failed", part.name)
            if owns_manager:
                state.manager.close()
            if settings.tracing.enabled:
                shutdown_tracing()  # flush the last spans

    state.ready_checks.append(_models_check(state))
    # the API description is served below, behind the API key like the API itself
    app = FastAPI(title="voxgate", version=package_version(), lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url=None)
    app.state.voxgate = state
    from .observability import install as install_observability  # request ids, latency, spans

    install_observability(app, state)

    @app.exception_handler(VoxgateError)
    async def _voxgate_error(request: Request, exc: VoxgateError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=_error_status(exc))

    @app.get("/health", tags=["ops"])
    async def health() -> dict[str, Any]:
        """Liveness: the process serves requests."""
        return {"status": "ok", "version": package_version()}

    @app.get("/ready", tags=["ops"])
    async def ready(request: Request) -> JSONResponse:
        """Readiness: every component's real check passes (503 with the failing ones).
        The per-check details (hosts, versions, counts) only with a valid API key."""
        results = await asyncio.gather(*(check() for check in state.ready_checks))
        checks = {name: {"ok": ok, "detail": detail} for name, ok, detail in results}
        ok = all(c["ok"] for c in checks.values())
        body: dict[str, Any] = {"status": "ready" if ok else "not ready"}
        if key_is_valid(settings, api_key_from_headers(request.headers)):
            body["checks"] = checks
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(require_api_key)])
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=[Depends(require_api_key)])
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="voxgate API")

    for router in _routers():
        app.include_router(router)
    if _WEB_DIR.is_dir():
        app.mount("/", StaticFiles(directory=_WEB_DIR, html=True), name="web")
    return app


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """How uvicorn serves the app: where, and no WebSocket message larger than the live frame
    limit is ever buffered (``ws_max_size``; the protocol closes such a socket with 1009)."""
    return {"host": settings.host, "port": settings.port,
            "ws_max_size": settings.streaming.max_frame_bytes}


def _routers() -> list[Any]:
    """Routers of every front door (later issues add theirs here)."""
    routers: list[Any] = []
    from .openai_api import router as openai_router  # OpenAI-compatible audio API + /v1/models

    routers.append(openai_router)
    from .openai_speech import router as speech_router  # /v1/audio/speech, /v1/audio/voices

    routers.append(speech_router)
    from .ws_agent import router as agent_router  # WebSocket /v1/agent (voice agent)

    routers.append(agent_router)
    from .realtime import router as realtime_router  # WebSocket /v1/realtime (OpenAI Realtime)

    routers.append(realtime_router)
    from .jobs_api import router as jobs_router  # REST jobs: /v1/process, /v1/status, templates
    from .metrics import router as metrics_router  # Prometheus /metrics

    routers.extend([jobs_router, metrics_router])
    from .ws import router as ws_router  # WebSocket /v1/asr (live transcription)

    routers.append(ws_router)
    from .ws_translate import router as translate_router  # WebSocket /ws/translate

    routers.append(translate_router)
    return routers


def _models_check(state: AppState):  # -> ReadyCheck
    async def check() -> tuple[str, bool, str]:
        from ..models import resolve

        model_id = state.settings.asr.model
        try:
            await asyncio.to_thread(resolve, model_id, state.settings.cache_dir,
                                    offline=True)
        except VoxgateError as exc:
            return "models", False, str(exc)
        return "models", True, f"{model_id} resolvable"

    return check


async def _sweep_models(state: AppState) -> None:
    interval = max(state.settings.model_idle_ttl_s / 4, 1.0)
    while True:
        await asyncio.sleep(interval)
        await asyncio.to_thread(state.manager.sweep)
