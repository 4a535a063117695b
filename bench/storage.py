"""Job upload and worker fetch with the audio in the local data dir vs in S3-compatible storage.

One run, same file, same API code: ``POST /v1/process`` of a ~50 MB WAV (LibriVox speech
repeated) through the real HTTP API (embedded Redis, no worker: only the upload is measured),
once with ``VOXGATE_STORAGE__URL`` empty (the data dir) and once with ``s3://`` on a moto
server process on loopback, then the worker's side (``storage.fetch``: the object as a local
file for the decoder). Also the process's peak RSS growth during each upload, which shows that
the file is streamed (a whole-file copy would add ~50 MB).

moto is a Python server: a real MinIO / S3 is faster, so the S3 figures are a lower bound.

    flock /tmp/voxgate-cpu.lock nice -n -10 .venv/bin/python bench/storage.py [--mb 50] [--runs 3]

Results: ``bench/results/storage.json`` and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

from voxgate.audio import decode_audio, encode_wav
from voxgate.config import Settings
from voxgate.jobs import EmbeddedRedis
from voxgate.storage import open_storage

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
KEY = "bench-key"
BUCKET = "bench-audio"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def make_wav(path: Path, mb: float) -> Path:
    clips = [decode_audio(p) for p in sorted(LIBRIVOX.glob("*.wav"))]
    if not clips:
        raise SystemExit("needs Debian's pocketsphinx-testdata (LibriVox clips)")
    one = np.concatenate(clips)
    samples = int(mb * 1024 * 1024 / 2)
    audio = np.resize(one, samples)
    path.write_bytes(encode_wav(audio))
    return path


@contextmanager
def moto_server() -> Iterator[str]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@contextmanager
def api(settings: Settings) -> Iterator[str]:
    import uvicorn

    from voxgate.server import create_app
    from voxgate.server.jobs_api import JobsComponent

    port = _free_port()
    app = create_app(settings, components=[JobsComponent(settings)])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    _wait_port(port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


class PeakRss:
    """Peak resident memory of this process (API + client) while a block runs."""

    def __init__(self) -> None:
        self.proc = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self) -> PeakRss:
        self.base = self.proc.memory_info().rss
        self.peak = self.base
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.base) / 1024 / 1024


def upload(base: str, path: Path) -> tuple[float, str, float]:
    with PeakRss() as rss, path.open("rb") as handle:
        started = time.perf_counter()
        r = httpx.post(f"{base}/v1/process", headers={"X-API-Key": KEY}, timeout=600,
                       files={"file": (path.name, handle, "audio/wav")})
        took = time.perf_counter() - started
    r.raise_for_status()
    return took, r.json()["task_id"], rss.growth_mb


def run_side(name: str, settings: Settings, wav: Path, runs: int) -> dict[str, Any]:
    size_mb = wav.stat().st_size / 1024 / 1024
    storage = open_storage(settings)
    uploads, fetches, rss = [], [], []
    with api(settings) as base:
        upload(base, wav)  # warm-up (imports, first connections)
        for _ in range(runs):
            took, task_id, growth = upload(base, wav)
            uploads.append(took)
            rss.append(growth)
            started = time.perf_counter()
            with storage.fetch(task_id) as local:
                assert local.stat().st_size == wav.stat().st_size
            fetches.append(time.perf_counter() - started)
            storage.delete(task_id)
    up, fetch = statistics.median(uploads), statistics.median(fetches)
    return {"side": name, "file_mb": round(size_mb, 1), "runs": runs,
            "upload_s": round(up, 3), "upload_mb_s": round(size_mb / up, 1),
            "fetch_s": round(fetch, 3),
            "fetch_mb_s": round(size_mb / fetch, 1) if fetch > 1e-3 else None,
            "peak_rss_growth_mb": round(max(rss), 1), "uploads_s": [round(u, 3) for u in uploads]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=float, default=50.0)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    load_start = os.getloadavg()[0]
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp, moto_server() as endpoint:
        import boto3

        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                     aws_access_key_id="bench", aws_secret_access_key="bench",
                     ).create_bucket(Bucket=BUCKET)
        wav = make_wav(Path(tmp) / "long.wav", args.mb)
        common = {"offline": True, "_env_file": None, "api_keys": [KEY],
                  "inprocess_worker": "off", "max_queue_depth": 1000}
        redis = EmbeddedRedis(Settings(data_dir=Path(tmp) / "data", _env_file=None))
        url = redis.start()
        try:
            for name, storage in (
                    ("local data dir", {}),
                    ("S3 (moto, loopback)", {"url": f"s3://{BUCKET}/bench",
                                             "endpoint_url": endpoint, "region": "us-east-1",
                                             "access_key_id": "bench",
                                             "secret_access_key": "bench"})):
                settings = Settings(data_dir=Path(tmp) / "data", redis_url=url,
                                    storage=storage, **common)
                rows.append(run_side(name, settings, wav, args.runs))
        finally:
            redis.stop()
    local, s3 = rows
    result = {"rows": rows,
              "s3_vs_local_upload_time": round(s3["upload_s"] / local["upload_s"], 2),
              "load_1min_start": round(load_start, 2),
              "load_1min_end": round(os.getloadavg()[0], 2),
              "wall_s": round(time.perf_counter() - started, 1)}
    out = Path(__file__).parent / "results" / "storage.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print("| side | file | upload (POST -> 202) | MB/s | worker fetch | peak RSS growth |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        fetch = f"{r['fetch_s']:.3f} s" + (f" ({r['fetch_mb_s']} MB/s)" if r["fetch_mb_s"] else "")
        print(f"| {r['side']} | {r['file_mb']} MB | {r['upload_s']:.2f} s | {r['upload_mb_s']} | "
              f"{fetch} | {r['peak_rss_growth_mb']} MB |")
    print(f"S3 / local upload time: x{result['s3_vs_local_upload_time']}; load "
          f"{result['load_1min_start']} -> {result['load_1min_end']}; {result['wall_s']} s")


if __name__ == "__main__":
    main()
