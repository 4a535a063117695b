"""Live work before file work on a shared model: the gate's order, and the real Whisper engine."""

from __future__ import annotations

import os
import sys
import threading
import time

import pytest
from conftest import wer

from voxgate.engines.asr_whisper import WhisperAsr
from voxgate.engines.base import AsrOptions
from voxgate.engines.priority import Priority, PriorityGate
from voxgate.models import resolve


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
    assert not gate.live_active() and not gate.served_live
    with gate.hold(Priority.LIVE_PARTIAL):
        pass
    assert gate.live_active() and gate.served_live


def _nice_of_threads() -> list[int]:
    """The nice value of every thread of this process (Linux /proc)."""
    values = []
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/stat") as stat:
            values.append(int(stat.read().rsplit(")", 1)[1].split()[16]))
    return values


def _shared_model_engine(manager) -> WhisperAsr:
    """A second Whisper base engine with no file lane: file work shares the live model."""
    resolved = resolve("whisper-base", manager.settings.cache_dir, offline=True)
    return WhisperAsr(str(resolved.path), model_id="whisper-base", file_lane_nice=0)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice values are Linux-only")
def test_file_work_moves_to_a_low_priority_copy_once_live_work_was_served(manager,
                                                                           librivox) -> None:
    """Before any live work, file work runs on the one model; after it, on a copy whose
    compute threads run at nice 19, and the copy's output is the same, word times included."""
    resolved = resolve("whisper-base", manager.settings.cache_dir, offline=True)
    asr = WhisperAsr(str(resolved.path), model_id="whisper-base", file_lane_nice=19)
    file = AsrOptions(language="en", beam_size=5, word_timestamps=True)
    chunks = [clip.audio for clip in librivox[:3]]
    on_live_model = asr.transcribe_batch(chunks, file)
    assert not asr.file_lane_loaded
    niced_before = _nice_of_threads().count(19)
    asr.transcribe_batch([librivox[4].audio], AsrOptions(language="en",
                                                         priority=Priority.LIVE_FINAL))
    on_file_lane = asr.transcribe_batch(chunks, file)
    assert asr.file_lane_loaded
    assert _nice_of_threads().count(19) > niced_before  # the copy's compute threads
    assert [r.text for r in on_file_lane] == [r.text for r in on_live_model]
    assert ([[(w.start, w.end) for s in r.segments for w in s.words] for r in on_file_lane]
            == [[(w.start, w.end) for s in r.segments for w in s.words] for r in on_live_model])


@pytest.mark.slow
@pytest.mark.parametrize("lane", ["low-priority copy", "shared model in units"])
def test_a_live_final_overtakes_a_running_file_batch(manager, librivox, lane) -> None:
    """Real Whisper base: a live final submitted while a batch of 10 file chunks decodes is
    done before the batch ends, whether file work runs on its low-priority copy of the model
    or (file lane off) takes the shared model two chunks at a time; with one lock for the
    whole batch it would wait for all 10."""
    asr = manager.asr("whisper-base") if lane == "low-priority copy" else \
        _shared_model_engine(manager)
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
    file_gate = asr._lane(Priority.FILE).gate
    assert (file_gate is asr.gate) == (lane != "low-priority copy")
    deadline = time.monotonic() + 30
    while not file_gate._busy and time.monotonic() < deadline:  # the file batch holds a model
        time.sleep(0.002)
    result = asr.transcribe_batch([librivox[4].audio], live)[0]
    events.append("live final done")
    job.join(120)
    assert events == ["live final done", "file batch done"]
    assert "amiable" in result.text.lower()
    assert len(file_results) == len(chunks)
    references = [clip.text for clip in librivox] * 2
    assert max(wer(ref, r.text) for ref, r in zip(references, file_results)) <= 0.15
