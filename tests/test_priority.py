"""Live work before file work on a shared model: the gate's order, and the real Whisper engine."""

from __future__ import annotations

import threading
import time

import pytest
from conftest import wer

from voxgate.engines.base import AsrOptions
from voxgate.engines.priority import Priority, PriorityGate


def test_waiters_are_served_by_priority_then_arrival() -> None:
    gate = PriorityGate()
    order: list[str] = []
    holding, release = threading.Event(), threading.Event()

    def first() -> None:
        with gate.hold(Priority.FILE):
            holding.set()
            release.wait(10)

    def waiter(name: str, priority: Priority) -> threading.Thread:
        def run() -> None:
            with gate.hold(priority):
                order.append(name)
        thread = threading.Thread(target=run)
        thread.start()
        deadline = time.monotonic() + 10
        while gate.queued < expected[0] and time.monotonic() < deadline:
            time.sleep(0.005)  # queued in this order before the next one arrives
        return thread

    owner = threading.Thread(target=first)
    owner.start()
    assert holding.wait(10)
    threads = []
    expected = [0]
    for name, priority in [("file-1", Priority.FILE), ("partial", Priority.LIVE_PARTIAL),
                           ("final-1", Priority.LIVE_FINAL), ("file-2", Priority.FILE),
                           ("final-2", Priority.LIVE_FINAL)]:
        expected[0] += 1
        threads.append(waiter(name, priority))
    assert gate.queued == 5 and gate.live_active()
    release.set()
    for thread in [owner, *threads]:
        thread.join(10)
    assert order == ["final-1", "final-2", "partial", "file-1", "file-2"]
    assert gate.waits[Priority.LIVE_FINAL] == 2 and gate.waits[Priority.FILE] == 2


def test_file_work_alone_never_counts_as_live() -> None:
    gate = PriorityGate(live_window_s=60)
    with gate.hold(Priority.FILE):
        pass
    assert not gate.live_active()
    with gate.hold(Priority.LIVE_PARTIAL):
        pass
    assert gate.live_active()


@pytest.mark.slow
def test_a_live_final_overtakes_a_running_file_batch(manager, librivox) -> None:
    """Real Whisper base: while live streams are served, a batch of 8 file chunks takes the
    model two chunks at a time, so a live final submitted mid-batch is decoded before the batch
    ends (with one lock for the whole batch it would wait for all 8)."""
    asr = manager.asr("whisper-base")
    chunks = [clip.audio for clip in librivox] * 2  # 10 real chunks, 2.7-7 s each
    live = AsrOptions(language="en", beam_size=5, priority=Priority.LIVE_FINAL)
    asr.transcribe_batch([librivox[1].audio], live)  # live streams are being served
    events: list[str] = []
    file_results: list = []

    def file_job() -> None:
        file_results.extend(asr.transcribe_batch(chunks, AsrOptions(language="en", beam_size=5)))
        events.append("file batch done")

    job = threading.Thread(target=file_job)
    job.start()
    deadline = time.monotonic() + 30
    while not asr.gate._busy and time.monotonic() < deadline:  # the file batch holds the model
        time.sleep(0.002)
    result = asr.transcribe_batch([librivox[4].audio], live)[0]
    events.append("live final done")
    job.join(120)
    assert events == ["live final done", "file batch done"]
    assert "amiable" in result.text.lower()
    assert len(file_results) == len(chunks)
    references = [clip.text for clip in librivox] * 2
    assert max(wer(ref, r.text) for ref, r in zip(references, file_results)) <= 0.15
