"""Queue workers: Settings + ModelManager once per worker, jobs run in-process (no fork per job).

``VoxgateWorker`` is an RQ ``SimpleWorker`` that
* keeps its started-registry entry alive with a heartbeat thread (TTL 3 x ``worker_heartbeat_s``)
  instead of RQ's job-timeout-long TTL, so a worker killed mid-job is noticed within seconds and
  ``requeue_abandoned`` (run by every worker and by the API) re-queues the job;
* enforces the job timeout with a timer (works in threads, unlike SIGALRM);
* runs in a thread of ``voxgate serve`` (sharing the server's models) or as ``voxgate worker``.

The job itself (``process_task``) maps outcomes onto the task state: permanent problems (bad
audio, invalid template, timeout) are FAILED and not retried; transient ones are re-raised so
RQ retries them; a cancellation request ends the job as CANCELLED.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .config import Settings
from .engines.manager import ModelManager
from .errors import AudioError, ConfigError, EngineError, ModelError
from .jobs import (
    TERMINAL,
    JobCancelled,
    JobQueue,
    TaskStatus,
    TaskStore,
    connect,
    now_iso,
    remove_task_audio,
    sweep_fetched_copies,
)
from .log_setup import bound
from .pipeline import JobSpec, run_pipeline
from .postprocess import llm_model_id
from .storage import AudioStorage, open_storage
from .tracing import continued
from .webhooks import WebhookSender

__all__ = ["WorkerRuntime", "build_worker", "process_task", "on_job_failure", "run_worker",
           "ThreadWorker", "preload"]

logger = logging.getLogger(__name__)

_RUNTIME: contextvars.ContextVar["WorkerRuntime"] = contextvars.ContextVar("voxgate_worker")


@dataclass
class WorkerRuntime:
    """What a job needs from its worker: settings, shared models, the task store."""

    settings: Settings
    manager: ModelManager
    store: TaskStore
    storage: AudioStorage = field(default=None)  # type: ignore[assignment]  # None: from settings
    webhooks: WebhookSender = field(init=False)

    def __post_init__(self) -> None:
        self.webhooks = WebhookSender(self.settings)
        if self.storage is None:
            self.storage = open_storage(self.settings)

    def finish(self, task_id: str, status: str, **fields: Any) -> None:
        """Write a terminal state, count it, and fire the webhook (COMPLETE/FAILED only)."""
        if not self.settings.keep_job_audio_h:  # else the janitor deletes it when time is up
            remove_task_audio(self.storage, task_id)  # before the state says it is over
        self.store.update(task_id, status=status, completed_at=now_iso(), **fields)
        metrics = fields.get("metrics") or {}
        self.store.record_outcome(status, metrics.get("input_duration_s") or 0.0,
                                  metrics.get("processing_time_s") or 0.0)
        raw = self.store.raw(task_id)
        url = raw.get("webhook_url")
        if url and status in (TaskStatus.COMPLETE.value, TaskStatus.FAILED.value):
            self.webhooks.send(url, self.store.get(task_id) or {})

    def process(self, task_id: str) -> None:
        raw = self.store.raw(task_id)
        if not raw:
            logger.warning("task %s expired or unknown; dropping its job", task_id)
            return
        if raw.get("status") in TERMINAL:
            return
        if raw.get("cancel_requested") == "1":
            self.finish(task_id, TaskStatus.CANCELLED.value, error="cancelled by request")
            return
        attempt = self.store.incr_attempts(task_id)
        self.store.update(task_id, status=TaskStatus.PREPROCESSING.value, progress=0.0,
                          started_at=now_iso(), error=None)
        logger.info("task %s: attempt %d", task_id, attempt)

        def on_stage(status: str, progress: float) -> None:
            self.store.update(task_id, status=status, progress=round(progress, 4))

        def check_cancel() -> None:
            if self.store.cancel_requested(task_id):
                raise JobCancelled(f"task {task_id} cancelled")

        try:
            spec = JobSpec.from_dict(json.loads(raw.get("request") or "{}"))
            with self.storage.fetch(task_id) as audio_path:  # a local file for the decoder
                outcome = run_pipeline(self.settings, self.manager, audio_path, spec,
                                       on_stage, check_cancel)
        except JobCancelled:
            self.finish(task_id, TaskStatus.CANCELLED.value, error="cancelled by request")
            return
        except (AudioError, ConfigError, ModelError) as exc:
            # Permanent: the same input fails the same way; retrying only burns time.
            logger.info("task %s failed permanently: %s", task_id, exc)
            self.finish(task_id, TaskStatus.FAILED.value, error=str(exc))
            return
        except EngineError as exc:
            if exc.retryable:
                raise  # RQ retries; on_job_failure records the attempt
            self.finish(task_id, TaskStatus.FAILED.value, error=str(exc))
            return
        except Exception as exc:
            from rq.timeouts import JobTimeoutException

            if isinstance(exc, JobTimeoutException):
                self.finish(task_id, TaskStatus.FAILED.value,
                            error=f"job timed out after {self.settings.job_timeout_s} s")
                return
            raise
        self.finish(task_id, TaskStatus.COMPLETE.value, progress=1.0, results=outcome.results,
                    versions=outcome.versions, metrics=outcome.metrics)


def process_task(task_id: str) -> None:
    """The RQ job function: runs in a worker that set up a :class:`WorkerRuntime`."""
    runtime = _RUNTIME.get(None)
    if runtime is None:
        raise RuntimeError("voxgate jobs must run in a voxgate worker (voxgate worker)")
    runtime.process(task_id)


def on_job_failure(job: Any, connection: Any, exc_type: Any, exc_value: Any, tb: Any) -> None:
    """RQ failure callback: an exception escaped the job, or its worker died (abandoned)."""
    runtime = _RUNTIME.get(None)
    store = runtime.store if runtime else TaskStore(connection, 7 * 24 * 3600)
    task_id = job.id
    raw = store.raw(task_id)
    if not raw or raw.get("status") in TERMINAL:
        return
    reason = f"{getattr(exc_type, '__name__', 'error')}: {exc_value}".strip().rstrip(":")
    if "Abandoned" in reason:
        reason = "worker stopped responding mid-job"
    if job.retries_left:
        store.update(task_id, status=TaskStatus.PENDING.value, progress=0.0,
                     error=f"attempt failed ({reason}); retrying")
        return
    if runtime:
        runtime.finish(task_id, TaskStatus.FAILED.value, error=reason)
    else:
        store.update(task_id, status=TaskStatus.FAILED.value, completed_at=now_iso(), error=reason)
        store.record_outcome(TaskStatus.FAILED.value)


@contextlib.contextmanager
def _riding_out_redis_outage(what: str) -> Iterator[None]:
    """Skip one Redis chore while Redis is down or restarting (the next round redoes it).

    RQ's work loop quits on any exception outside its blocking dequeue (which retries with
    backoff on its own), so one chore that met a restarting Redis used to end an idle worker
    for good; with these guarded the worker waits in the dequeue until Redis is back.
    """
    from redis.exceptions import ConnectionError as RedisConnectionError

    try:
        yield
    except RedisConnectionError as exc:
        logger.warning("Redis unreachable (%s); %s skipped, retried next round", exc, what)


def _worker_class():  # -> type[SimpleWorker]; built lazily so importing needs no RQ
    from rq.timeouts import TimerDeathPenalty
    from rq.worker import SimpleWorker

    class VoxgateWorker(SimpleWorker):
        """SimpleWorker with short heartbeats, a thread-safe timeout, a shared runtime, and
        idle-time Redis chores that ride out a Redis restart."""

        death_penalty_class = TimerDeathPenalty
        runtime: WorkerRuntime
        job_queue: JobQueue

        def check_for_suspension(self, burst: bool) -> None:
            with _riding_out_redis_outage("the suspension check"):
                super().check_for_suspension(burst)

        def run_maintenance_tasks(self) -> None:
            with _riding_out_redis_outage("registry maintenance"):
                super().run_maintenance_tasks()

        def heartbeat(self, *args: Any, **kwargs: Any) -> None:
            with _riding_out_redis_outage("the worker heartbeat"):
                super().heartbeat(*args, **kwargs)

        def set_state(self, *args: Any, **kwargs: Any) -> None:
            with _riding_out_redis_outage("recording the worker state"):
                super().set_state(*args, **kwargs)

        def get_heartbeat_ttl(self, job: Any) -> int:
            return 3 * self.runtime.settings.worker_heartbeat_s

        def _install_signal_handlers(self) -> None:
            if threading.current_thread() is threading.main_thread():
                super()._install_signal_handlers()

        def execute_job(self, job: Any, queue: Any) -> None:
            done = threading.Event()
            beat = threading.Thread(target=self._beat, args=(job, done), daemon=True,
                                    name="voxgate-heartbeat")
            token = _RUNTIME.set(self.runtime)
            beat.start()
            try:  # every log line of the job names its task; its spans continue the API's trace
                with bound(task_id=job.id, door="worker", request_id=None, session_id=None), \
                        continued("voxgate.job", (job.meta or {}).get("trace"),
                                  attributes={"voxgate.task_id": job.id}), \
                        _riding_out_redis_outage("RQ's record of the job's end"):
                    # a Redis restart as the job ends: its outcome is in the task store (or
                    # not, then its started-registry entry expires and the job runs again)
                    super().execute_job(job, queue)
            finally:
                done.set()
                _RUNTIME.reset(token)
                beat.join()

        def _beat(self, job: Any, done: threading.Event) -> None:
            interval = self.runtime.settings.worker_heartbeat_s
            _RUNTIME.set(self.runtime)  # threads start with an empty context
            while not done.wait(interval):
                try:
                    self.maintain_heartbeats(job)
                    self.job_queue.requeue_abandoned()
                except Exception:  # noqa: BLE001 - a missed beat is retried next interval
                    logger.warning("worker heartbeat failed", exc_info=True)

        def dequeue_job_and_maintain_ttl(self, timeout: Any, max_idle_time: Any = None) -> Any:
            """Wait for a job in ``timeout`` slices, so a stop request ends an idle worker and
            jobs of dead workers are re-queued between slices."""
            while True:
                token = _RUNTIME.set(self.runtime)
                try:
                    with _riding_out_redis_outage("re-queueing abandoned jobs"):
                        self.job_queue.requeue_abandoned()  # also other workers' dead jobs
                finally:
                    _RUNTIME.reset(token)
                result = super().dequeue_job_and_maintain_ttl(timeout, timeout or max_idle_time)
                if result is not None or self._stop_requested or timeout is None:
                    return result

    return VoxgateWorker


def build_worker(settings: Settings, manager: ModelManager, connection: Any,
                 name: str | None = None,
                 storage: AudioStorage | None = None):  # -> VoxgateWorker
    cls = _worker_class()
    job_queue = JobQueue(connection, settings, storage)
    # copies of S3 audio a killed worker of this machine left behind (a standalone worker's
    # disk has no other sweep)
    sweep_fetched_copies(settings, job_queue.storage)
    # dequeue blocks at most worker_ttl - 15 s: 2 s, so stop requests act fast
    worker = cls([job_queue.queue], connection=connection, name=name, worker_ttl=17,
                 maintenance_interval=max(settings.worker_heartbeat_s, 5))
    worker.runtime = WorkerRuntime(settings, manager, job_queue.store, job_queue.storage)
    worker.job_queue = job_queue
    return worker


def preload(settings: Settings, manager: ModelManager, llm: bool = False) -> None:
    """Load the default models now, so the first job is not slow and errors show at start."""
    manager.asr(settings.asr.model)
    manager.vad()
    if llm:
        manager.get("llm", llm_model_id(settings))


def run_worker(settings: Settings, url: str, *, burst: bool = False, name: str | None = None,
               manager: ModelManager | None = None, preload_llm: bool = False) -> None:
    """Blocking worker loop (``voxgate worker``): SIGTERM/SIGINT finish the current job first."""
    manager = manager or ModelManager(settings)
    storage = open_storage(settings)
    storage.check()  # a missing bucket or refused credentials stop the worker here, clearly
    connection = connect(url, settings.redis_timeout_s)
    try:
        connection.ping()
    except Exception as exc:  # noqa: BLE001 - redis raises several connection error types
        raise ConfigError(f"cannot reach Redis at {url.split('@')[-1]} ({type(exc).__name__}); "
                          "run `voxgate serve` (embedded Redis) or set VOXGATE_REDIS_URL") from exc
    preload(settings, manager, llm=preload_llm)
    worker = build_worker(settings, manager, connection, name, storage)
    logger.info("worker %s ready on %s", worker.name, url.split("@")[-1])
    try:
        worker.work(burst=burst, logging_level="WARNING", with_scheduler=False)
    finally:
        worker.runtime.webhooks.drain()  # --burst / SIGTERM: deliveries end before the exit
        manager.close()


class ThreadWorker:
    """A worker thread inside the server process, sharing the server's ModelManager."""

    def __init__(self, settings: Settings, manager: ModelManager, url: str) -> None:
        self.settings = settings
        self.manager = manager
        self.url = url
        self.worker: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.worker = build_worker(self.settings, self.manager,
                                   connect(self.url, self.settings.redis_timeout_s),
                                   name=f"inproc-{uuid.uuid4().hex[:8]}")
        self._thread = threading.Thread(target=self._run, name="voxgate-worker", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.worker.work(logging_level="WARNING", with_scheduler=False)
        except Exception:  # noqa: BLE001 - logged; the server's /ready shows the missing worker
            logger.exception("in-process worker stopped")

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.worker is None or self._thread is None:
            return
        self.worker._stop_requested = True
        self._thread.join(timeout=timeout_s)
        self.worker.runtime.webhooks.drain()
