"""TaskStore on a real (embedded) Redis: what status and SSE consumers can rely on."""

from __future__ import annotations

import json
import uuid
from types import SimpleNamespace

import pytest

from voxgate.config import Settings
from voxgate.jobs import EmbeddedRedis, TaskStatus, TaskStore, connect
from voxgate.worker import on_job_failure


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):
    settings = Settings(data_dir=tmp_path_factory.mktemp("redis"), offline=True, _env_file=None)
    redis = EmbeddedRedis(settings)
    url = redis.start()
    try:
        yield TaskStore(connect(url), 60)
    finally:
        redis.stop()


def _event_progress(store: TaskStore, task_id: str) -> list[float]:
    entries = store.redis.xrange(f"voxgate:task:{task_id}:events")
    data = [json.loads(fields[b"data"]) for _, fields in entries]
    return [d["progress"] for d in data if "progress" in d]


def test_progress_never_goes_backwards_when_a_job_is_retried(store: TaskStore) -> None:
    """A second attempt starts its stages at 0 again: status and events keep the maximum."""
    task_id = str(uuid.uuid4())
    store.create(task_id, {"features": ["raw_transcript"]}, None)
    store.update(task_id, status=TaskStatus.PREPROCESSING.value, progress=0.0)
    store.update(task_id, status=TaskStatus.PROCESSING_ASR.value, progress=0.42)
    # what RQ's failure callback does for a job with retries left, then the next attempt
    on_job_failure(SimpleNamespace(id=task_id, retries_left=1), store.redis,
                   RuntimeError, RuntimeError("worker lost"), None)
    assert store.get(task_id)["status"] == TaskStatus.PENDING.value
    store.update(task_id, status=TaskStatus.PREPROCESSING.value, progress=0.0)
    store.update(task_id, status=TaskStatus.PROCESSING_ASR.value, progress=0.05)
    assert store.get(task_id)["progress"] == pytest.approx(0.42)
    store.update(task_id, status=TaskStatus.PROCESSING_ASR.value, progress=0.6)
    progress = _event_progress(store, task_id)
    assert progress == sorted(progress) and progress[-1] == pytest.approx(0.6)
    assert store.get(task_id)["progress"] == pytest.approx(0.6)


def test_updates_without_progress_leave_it_alone(store: TaskStore) -> None:
    task_id = str(uuid.uuid4())
    store.create(task_id, {}, None)
    store.update(task_id, progress=0.3)
    store.update(task_id, error="transient", event=False)
    assert store.get(task_id)["progress"] == pytest.approx(0.3)


def test_embedded_redis_socket_path_is_stable_and_short(tmp_path) -> None:
    """A data dir too deep for a unix socket gets a short path in /tmp that every process
    (``serve``, ``worker``, a restart) computes alike: no per-process hash randomisation."""
    import subprocess
    import sys

    deep = tmp_path / ("d" * 60) / ("e" * 60)
    settings = Settings(data_dir=deep, _env_file=None)
    path = EmbeddedRedis.socket_path(settings)
    assert len(str(path)) < 100 and str(path).startswith("/tmp/voxgate-")
    code = ("import sys; from voxgate.config import Settings; from voxgate.jobs import "
            "EmbeddedRedis; print(EmbeddedRedis.socket_path(Settings(data_dir=sys.argv[1], "
            "_env_file=None)))")
    others = {subprocess.run([sys.executable, "-c", code, str(deep)], capture_output=True,
                             text=True, check=True).stdout.strip() for _ in range(2)}
    assert others == {str(path)}
    short = Settings(data_dir=tmp_path, _env_file=None)
    assert EmbeddedRedis.socket_path(short) == (tmp_path / "redis" / "redis.sock").resolve()
