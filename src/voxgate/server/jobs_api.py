"""REST jobs: ``POST /v1/process`` -> queue -> ``GET /v1/status/{id}`` (+ SSE), cancel, templates.

Routers stay thin: validate the request, store the upload, create the task, enqueue. The
``JobsComponent`` owns the Redis connection (an embedded server when ``VOXGATE_REDIS_URL`` is
empty), the in-process worker thread and a janitor that re-queues jobs of dead workers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from starlette.datastructures import UploadFile

from ..config import Settings
from ..errors import AudioError, AudioTooLongError, ConfigError, ModelError
from ..jobs import (
    TERMINAL,
    EmbeddedRedis,
    JobQueue,
    connect,
    ensure_queue_available,
    remove_task_audio,
    sweep_audio,
)
from ..log_setup import bind as bind_log_context
from ..pipeline import FEATURES, JobSpec
from ..postprocess import list_templates
from ..storage import AudioStorage, StorageError, StorageUnavailableError, open_storage
from ..webhooks import check_webhook_target, validate_webhook_url
from .deps import (
    UploadRequest,
    discard_spooled,
    get_state,
    new_task_id,
    require_api_key,
    save_upload,
)
from .metrics import metrics_of
from .model_cards import client_model_id
from .state import AppState

__all__ = ["JobsComponent", "router", "ALLOWED_EXTENSIONS"]

logger = logging.getLogger(__name__)

ALLOWED_EXTENSIONS = frozenset({"wav", "mp3", "m4a", "mp4", "aac", "flac", "ogg", "oga", "opus",
                                "webm", "mka", "mkv", "mov", "wma", "amr", "3gp", "aiff", "aif"})
_ALLOWED_MIME_PREFIXES = ("audio/", "video/")
_ALLOWED_MIME = frozenset({"application/octet-stream", "application/ogg", ""})
_FORM_SLACK = 256 * 1024  # multipart headers and small fields on top of the file itself
_MAX_WORKER_SILENCE_S = 60.0
_SWEEP_INTERVAL_S = 300.0
_SSE_BLOCK_MS = 10_000  # an SSE stream's keep-alive interval
_EVENT_ID = re.compile(r"\d{1,20}(-\d{1,20})?")  # a Redis stream entry id


class JobsComponent:
    """Redis (embedded or external), the queue, an optional in-process worker, a janitor."""

    name = "jobs"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.embedded: EmbeddedRedis | None = None
        self.storage: AudioStorage | None = None
        self.url = ""
        self.queue: JobQueue | None = None
        self.aredis: Any = None
        self.thread_worker: Any = None
        self._janitor: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def runs_worker(self) -> bool:
        mode = self.settings.inprocess_worker
        return mode == "on" or (mode == "auto" and not self.settings.redis_url)

    async def start(self, state: AppState) -> None:
        import redis.asyncio as aredis

        ensure_queue_available()
        storage = open_storage(self.settings)
        await asyncio.to_thread(storage.check)  # a missing bucket or bad credentials: stop here
        self.storage = storage
        if self.settings.redis_url:
            self.url = self.settings.redis_url
        else:
            self.embedded = EmbeddedRedis(self.settings)
            self.url = await asyncio.to_thread(self.embedded.start)
        timeout_s = self.settings.redis_timeout_s
        connection = connect(self.url, timeout_s)
        await asyncio.to_thread(connection.ping)
        self.queue = JobQueue(connection, self.settings, storage)
        # SSE reads block up to _SSE_BLOCK_MS on top of the command timeout
        self.aredis = aredis.Redis.from_url(self.url, socket_connect_timeout=min(timeout_s, 5.0),
                                            socket_timeout=timeout_s + _SSE_BLOCK_MS / 1000)
        if self.runs_worker:
            from ..worker import ThreadWorker

            self.thread_worker = ThreadWorker(self.settings, state.manager, self.url)
            await asyncio.to_thread(self.thread_worker.start)
        self._janitor = asyncio.create_task(self._requeue_abandoned())
        self._sweeper = asyncio.create_task(self._sweep_audio())
        state.ready_checks.extend([self._redis_check, self._worker_check])
        metrics_of(state).add_source(self._collect)
        logger.info("jobs: queue on %s, in-process worker %s", self.url.split("@")[-1],
                    "on" if self.thread_worker else "off")

    async def stop(self, state: AppState) -> None:
        state.remove_ready_checks(self._redis_check, self._worker_check)
        if self._janitor:
            self._janitor.cancel()
        if self._sweeper:
            self._sweeper.cancel()
        if self.thread_worker:
            await asyncio.to_thread(self.thread_worker.stop)
        if self.aredis is not None:
            await self.aredis.aclose()
        if self.queue is not None:
            self.queue.redis.close()
        if self.embedded:
            await asyncio.to_thread(self.embedded.stop)

    async def _requeue_abandoned(self) -> None:
        """Periodically hand jobs of workers that died back to the queue (or fail them)."""
        while True:
            await asyncio.sleep(self.settings.worker_heartbeat_s)
            try:
                await asyncio.to_thread(self.queue.requeue_abandoned)
            except Exception:  # noqa: BLE001 - Redis may be briefly away; next round retries
                logger.warning("re-queueing abandoned jobs failed", exc_info=True)

    async def _sweep_audio(self) -> None:
        """Periodically delete job audio that is no longer needed (see ``jobs.sweep_audio``)."""
        while True:
            try:
                removed = await asyncio.to_thread(sweep_audio, self.settings, self.queue.store,
                                                  storage=self.queue.storage)
                if removed:
                    logger.info("deleted the audio of %d finished or expired job(s)", len(removed))
            except Exception:  # noqa: BLE001 - Redis may be briefly away; next round retries
                logger.warning("sweeping job audio failed", exc_info=True)
            await asyncio.sleep(_SWEEP_INTERVAL_S)

    async def _redis_check(self) -> tuple[str, bool, str]:
        try:
            await self.aredis.ping()
        except Exception as exc:  # noqa: BLE001 - any failure is "not ready"
            return "redis", False, f"unreachable: {type(exc).__name__}"
        return "redis", True, "ping ok"

    async def _worker_check(self) -> tuple[str, bool, str]:
        try:
            workers = await asyncio.to_thread(self.queue.workers)
        except Exception as exc:  # noqa: BLE001
            return "worker", False, f"cannot list workers: {type(exc).__name__}"
        alive = [w for w in workers if w["heartbeat_age_s"] is not None
                 and w["heartbeat_age_s"] < _MAX_WORKER_SILENCE_S]
        if not alive:
            return "worker", False, "no worker heartbeat in the last 60 s (start voxgate worker)"
        return "worker", True, f"{len(alive)} worker(s) alive"

    def _collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        from rq.registry import FailedJobRegistry, StartedJobRegistry

        queue = self.queue
        yield GaugeMetricFamily("voxgate_jobs_queued", "Jobs waiting in the queue",
                                value=queue.depth())
        yield GaugeMetricFamily("voxgate_jobs_running", "Jobs being processed",
                                value=StartedJobRegistry(queue=queue.queue).count)
        yield GaugeMetricFamily("voxgate_jobs_failed_registry", "Jobs in RQ's failed registry",
                                value=FailedJobRegistry(queue=queue.queue).count)
        yield GaugeMetricFamily("voxgate_workers", "Workers registered on the queue",
                                value=len(queue.workers()))
        stats = queue.store.stats()
        outcomes = CounterMetricFamily("voxgate_jobs_finished", "Jobs finished, by final status",
                                       labels=["status"])
        for key, value in stats.items():
            if key.startswith("jobs_"):
                outcomes.add_metric([key[5:].upper()], value)
        yield outcomes
        yield CounterMetricFamily("voxgate_jobs_audio_seconds", "Audio processed by jobs",
                                  value=stats.get("audio_seconds", 0.0))
        yield CounterMetricFamily("voxgate_jobs_processing_seconds",
                                  "Wall time spent processing jobs",
                                  value=stats.get("processing_seconds", 0.0))


_QUEUE_RETRY_AFTER_S = 5


def _queue_outage_errors() -> tuple[type[BaseException], ...]:
    """What redis-py raises when the server is down, restarting or silent (none without it)."""
    try:
        from redis.exceptions import BusyLoadingError, ConnectionError, TimeoutError
    except ImportError:
        return ()
    return ConnectionError, TimeoutError, BusyLoadingError


class _QueueRoute(APIRoute):
    """A jobs route: while Redis is unreachable (restarting, network gone, silent past
    ``VOXGATE_REDIS_TIMEOUT_S``) the answer is 503 with a Retry-After and a detail that names
    the queue, not a 500; the route works again as soon as Redis answers."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        outage = _queue_outage_errors()

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except outage as exc:
                logger.warning("job queue unreachable: %s", exc)
                metrics_of(get_state(request)).jobs_rejected.labels("503").inc()
                return JSONResponse(
                    {"detail": f"the job queue (Redis) is unreachable ({type(exc).__name__}); "
                               f"retry in a few seconds"},
                    status_code=503, headers={"Retry-After": str(_QUEUE_RETRY_AFTER_S)})

        return guarded


router = APIRouter(tags=["jobs"], route_class=_QueueRoute)


def _jobs(state: AppState) -> JobsComponent:
    jobs = state.components.get("jobs")
    if jobs is None or jobs.queue is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE,
                            detail="the job queue is not running on this server")
    return jobs


def _reject(state: AppState, code: int, detail: str, headers: dict[str, str] | None = None,
            ) -> HTTPException:
    metrics_of(state).jobs_rejected.labels(str(code)).inc()
    return HTTPException(code, detail=detail, headers=headers)


def _task_id(task_id: str) -> str:
    try:
        return str(uuid.UUID(task_id))
    except ValueError:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no task {task_id[:64]!r}") from None


def _probe(path: Path, max_seconds: float) -> None:
    """A real decode of the first second: ``AudioError`` unless the file holds audio,
    ``AudioTooLongError`` when it declares more than ``max_seconds``."""
    from ..audio import iter_audio_blocks

    blocks = iter_audio_blocks(path, block_seconds=1.0, max_seconds=max_seconds)
    try:
        first = next(blocks, None)
    finally:
        blocks.close()
    if first is None or first.size == 0:
        raise AudioError("the file contains no decodable audio samples")


_STORAGE_RETRY_AFTER_S = 30


def _storage_detail(exc: StorageError) -> str:
    """What a client is told (the operator's log has the bucket and the reason)."""
    if isinstance(exc, StorageUnavailableError):
        return "the audio storage is unreachable; retry later"
    return "the audio storage refused the request (a server configuration problem)"


def _too_large_detail(settings: Settings) -> str:
    return f"file is larger than the {settings.max_upload_mb} MB limit (VOXGATE_MAX_UPLOAD_MB)"


def _form_text(form: Any, name: str) -> str | None:
    value = form.get(name)
    if value is None or isinstance(value, UploadFile):
        return None
    value = str(value).strip()
    return value or None


_PROCESS_DOC = {
    "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["file"],
        "properties": {
            "file": {"type": "string", "format": "binary"},
            "features": {"type": "array", "items": {"type": "string", "enum": list(FEATURES)},
                         "description": "repeat the field; default raw_transcript (+ summary "
                                        "when template_id is given)"},
            "template_id": {"type": "string", "description": "required with summary"},
            "language": {"type": "string", "description": "ISO code or 'auto'"},
            "model": {"type": "string", "description": "ASR catalogue id"},
            "webhook_url": {"type": "string", "description": "http(s) URL notified at the end"},
        }}}}},
}


@router.post("/v1/process", status_code=202, dependencies=[Depends(require_api_key)],
             openapi_extra=_PROCESS_DOC, summary="Upload audio and queue a job")
async def process(request: Request) -> JSONResponse:
    """202 with ``task_id``; 400 bad form, 413 too large, 415 not audio, 422 invalid, 429 full."""
    state = get_state(request)
    settings = state.settings
    jobs = _jobs(state)
    max_bytes = settings.max_upload_mb * 1024 * 1024
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise _reject(state, 400, "send multipart/form-data with a 'file' field")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes + _FORM_SLACK:
        raise _reject(state, 413, _too_large_detail(settings))
    depth = await asyncio.to_thread(jobs.queue.depth)
    if depth >= settings.max_queue_depth:
        retry_after = str(max(5, min(300, depth * 2)))
        raise _reject(state, 429, f"queue is full ({depth} jobs waiting); retry later",
                      headers={"Retry-After": retry_after})
    # the body is cut off past the limit as it streams; the file is written once, in the data dir
    upload_request = UploadRequest(request.scope, request.receive,
                                   max_bytes=max_bytes + _FORM_SLACK,
                                   spool_dir=jobs.queue.storage.staging_dir, named=True,
                                   too_large=HTTPException(413, _too_large_detail(settings)))
    try:
        form = await upload_request.form(max_files=1, max_fields=32)
    except HTTPException as exc:  # 413 past the limit, 507 when the data dir is full
        raise _reject(state, exc.status_code, str(exc.detail), exc.headers) from None
    except Exception as exc:  # noqa: BLE001 - malformed multipart bodies raise several types
        raise _reject(state, 400, f"malformed multipart body: {exc}") from exc
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise _reject(state, 400, "missing 'file' field (the audio to process)")
        features = [f.strip() for v in form.getlist("features") if isinstance(v, str)
                    for f in v.split(",") if f.strip()]
        template_id = _form_text(form, "template_id")
        if not features:
            features = ["raw_transcript"] + (["summary"] if template_id else [])
        language = _form_text(form, "language")
        spec = JobSpec(features=tuple(dict.fromkeys(features)), template_id=template_id,
                       language=None if language in (None, "auto") else language.lower(),
                       model=_form_text(form, "model"))
        webhook = _form_text(form, "webhook_url")
        try:
            if spec.model is not None:  # a catalogue id or alias the server offers, never a path
                spec.model = client_model_id(settings, spec.model, "asr")
            spec.validate(settings)
            if webhook:
                webhook = validate_webhook_url(webhook)
                if not settings.webhook_secret:
                    raise ConfigError("webhook_url: this server sends no webhooks "
                                      "(VOXGATE_WEBHOOK_SECRET is not set)")
                await asyncio.to_thread(check_webhook_target, webhook,
                                        settings.webhook_allowed_hosts)
        except (ConfigError, ModelError) as exc:
            raise _reject(state, 422, str(exc)) from exc
        mime = (upload.content_type or "").split(";")[0].strip().lower()
        if not mime.startswith(_ALLOWED_MIME_PREFIXES) and mime not in _ALLOWED_MIME:
            raise _reject(state, 415, f"content type {mime!r} is not audio or video")
        task_id = new_task_id()
        bind_log_context(task_id=task_id)  # the rest of this request's log lines name the task
        directory = jobs.queue.storage.staging_dir / task_id
        try:
            path = await save_upload(upload, directory, max_bytes, ALLOWED_EXTENSIONS)
        except HTTPException as exc:
            await asyncio.to_thread(shutil.rmtree, directory, ignore_errors=True)
            raise _reject(state, exc.status_code, str(exc.detail)) from exc
    finally:
        await discard_spooled(form)
    try:
        await asyncio.to_thread(_probe, path, settings.max_job_audio_s)
    except AudioTooLongError as exc:
        await asyncio.to_thread(shutil.rmtree, directory, ignore_errors=True)
        raise _reject(state, 413, f"the audio is longer than the {exc.limit_s:g} s limit for "
                                  "jobs (VOXGATE_MAX_JOB_AUDIO_S)") from exc
    except AudioError as exc:
        await asyncio.to_thread(shutil.rmtree, directory, ignore_errors=True)
        raise _reject(state, 415, f"not a decodable audio file: {exc}") from exc
    size = path.stat().st_size
    try:  # into the storage (object storage: streamed, in parts; nothing left if it fails)
        await asyncio.to_thread(jobs.queue.storage.put_file, task_id, path)
    except StorageError as exc:
        await asyncio.to_thread(shutil.rmtree, directory, ignore_errors=True)
        logger.warning("task %s: storing the upload failed: %s", task_id, exc)
        raise _reject(state, 503, _storage_detail(exc),
                      headers={"Retry-After": str(_STORAGE_RETRY_AFTER_S)}) from exc
    try:
        await asyncio.to_thread(jobs.queue.store.create, task_id, spec.to_dict(), webhook)
        await asyncio.to_thread(jobs.queue.enqueue, task_id)
    except Exception as exc:
        await asyncio.to_thread(remove_task_audio, jobs.queue.storage, task_id)
        logger.exception("enqueue failed")
        raise _reject(state, 503, f"cannot queue the job: {type(exc).__name__}") from exc
    metrics = metrics_of(state)
    metrics.upload_bytes.observe(size)
    for feature in spec.features:
        metrics.jobs_submitted.labels(feature).inc()
    return JSONResponse({"task_id": task_id, "status": "PENDING",
                         "status_url": f"/v1/status/{task_id}",
                         "events_url": f"/v1/status/{task_id}/events"}, status_code=202)


async def _status_doc(state: AppState, task_id: str) -> dict[str, Any]:
    jobs = _jobs(state)
    doc = await asyncio.to_thread(jobs.queue.store.get, _task_id(task_id))
    if doc is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no task {task_id} (unknown or expired)")
    return doc


@router.get("/v1/status/{task_id}", dependencies=[Depends(require_api_key)],
            summary="Status, versions, metrics and results of a job")
async def get_status(task_id: str, request: Request) -> dict[str, Any]:
    return await _status_doc(get_state(request), task_id)


@router.get("/v1/jobs/{task_id}", dependencies=[Depends(require_api_key)],
            summary="Same as /v1/status/{task_id}")
async def get_job(task_id: str, request: Request) -> dict[str, Any]:
    return await _status_doc(get_state(request), task_id)


@router.get("/v1/status/{task_id}/events", dependencies=[Depends(require_api_key)],
            summary="Server-sent events: every state change in order, then the final document")
async def events(task_id: str, request: Request) -> StreamingResponse:
    state = get_state(request)
    jobs = _jobs(state)
    doc = await _status_doc(state, task_id)
    key = jobs.queue.store.events_key(doc["task_id"])
    start = (request.headers.get("last-event-id") or "0-0").strip()
    if not _EVENT_ID.fullmatch(start):
        raise HTTPException(status.HTTP_400_BAD_REQUEST,
                            detail=f"Last-Event-ID {start[:40]!r} is not an event id of this "
                                   "stream (like 1700000000000-0)")

    async def stream() -> AsyncIterator[str]:
        cursor = start
        while True:
            batch = await jobs.aredis.xread({key: cursor}, count=100, block=_SSE_BLOCK_MS)
            if not batch:
                yield ": keep-alive\n\n"
                if not await jobs.aredis.exists(key):
                    return
                continue
            for _, entries in batch:
                for entry_id, fields in entries:
                    cursor = entry_id.decode()
                    data = fields[b"data"].decode()
                    yield f"id: {cursor}\nevent: status\ndata: {data}\n\n"
                    if json.loads(data).get("status") in TERMINAL:
                        final = await asyncio.to_thread(jobs.queue.store.get, doc["task_id"])
                        yield f"event: result\ndata: {json.dumps(final)}\n\n"
                        return

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.delete("/v1/jobs/{task_id}", status_code=202, dependencies=[Depends(require_api_key)],
               summary="Cancel a queued or running job; purge a finished one (200)")
async def cancel(task_id: str, request: Request) -> JSONResponse:
    state = get_state(request)
    jobs = _jobs(state)
    doc = await _status_doc(state, task_id)
    if doc["status"] in TERMINAL:  # finished: purge its results, events and audio
        try:
            await asyncio.to_thread(jobs.queue.purge, doc["task_id"])
        except StorageError as exc:  # nothing was purged: the client can simply retry
            logger.warning("task %s: purge failed: %s", doc["task_id"], exc)
            raise HTTPException(503, detail=f"{_storage_detail(exc)}; the task was not purged",
                                headers={"Retry-After": str(_STORAGE_RETRY_AFTER_S)}) from exc
        return JSONResponse({"task_id": doc["task_id"], "status": "PURGED"}, status_code=200)
    result = await asyncio.to_thread(jobs.queue.cancel, doc["task_id"])
    return JSONResponse({"task_id": doc["task_id"], "status": result}, status_code=202)


@router.get("/v1/templates", dependencies=[Depends(require_api_key)],
            summary="Summary templates: id, name, description, version, JSON Schema")
async def templates(request: Request) -> dict[str, Any]:
    found = await asyncio.to_thread(list_templates, get_state(request).settings)
    return {"templates": [t.public() for t in found]}
