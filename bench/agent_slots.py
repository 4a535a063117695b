"""Voice agent, two sessions at once: one shared llama.cpp slot vs a slot per session.

Two scripted conversations talk at the same time (as in ``bench/agent.py --sessions 2``) to the
agent's in-process llama.cpp engine, with the agent's own request pattern: the session's prompt
read when it opens (``Prefill.open``), then per user turn the partial transcripts prefilled
(one-token requests with the words so far, ``cache_prompt``) while the user "speaks" (0.35 s a
partial), then the reply (up to 40 tokens, greedy). Measured per reply: time to the first token
and to the 40th (two replies generating at once share the cores: with a slot each they are
decoded in one batch); per run, the prompt tokens llama.cpp read in all (its own ``timings``). Configurations: ``session_slots=0`` (one slot for everything: the sessions evict each
other's conversation) and ``session_slots=2``, alternating per round; and the process RSS each
engine adds (its KV pool).

    python bench/agent_slots.py [--rounds 2]      # writes bench/results/agent_slots.json
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import re
import statistics
import time
from pathlib import Path
from typing import Any

from voxgate.config import Settings
from voxgate.engines.base import ChatMessage
from voxgate.engines.llm_llamacpp import LlamaCppLlm
from voxgate.engines.priority import Priority
from voxgate.models import resolve

RESULTS = Path(__file__).resolve().parent / "results"
MODEL = "qwen2.5-coder-1.5b-instruct-q4km"
PARTIAL_S = 0.35  # time between two partial transcripts of the user's turn
REPLY_TOKENS = 40
CONVERSATIONS = [  # the questions of bench/agent.py's first two conversations
    ["What is the capital of France?", "Tell me about the history of Rome in a few sentences.",
     "How many days are there in a week?"],
    ["What color is the sky on a clear day?", "Explain how a bicycle works, step by step.",
     "What is two plus two?"],
]
_READ = re.compile(r"slot (\d+): prompt (\d+) tokens read")


class Reads(logging.Handler):
    """llama.cpp's prompt tokens read, per request, from the engine's timings logger."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.tokens: list[int] = []

    def emit(self, record: logging.LogRecord) -> None:
        match = _READ.search(record.getMessage())
        if match:
            self.tokens.append(int(match.group(2)))


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        return int(status.read().split("VmRSS:")[1].split()[0]) / 1024


async def session(llm: LlamaCppLlm, key: str, system: str, questions: list[str],
                  reads: Reads) -> list[dict[str, Any]]:
    live = {"cache_prompt": True, "priority": Priority.LIVE_FINAL, "cache_key": key}

    async def request(messages: list[ChatMessage], max_tokens: int) -> tuple[float, float, str]:
        started, first, text = time.monotonic(), None, ""
        async for delta in llm.stream(messages, max_tokens=max_tokens, **live):
            first = first or time.monotonic()
            text += delta
        return (first or time.monotonic()) - started, time.monotonic() - started, text

    history = [ChatMessage("system", system)]
    await request(history, 1)  # the session opens
    rows = []
    for question in questions:
        words = question.split()
        for n in range(2, len(words), 2):  # partials while the user speaks
            await asyncio.sleep(PARTIAL_S)
            await request([*history, ChatMessage("user", " ".join(words[:n]))], 1)
        await asyncio.sleep(PARTIAL_S)
        ttft, total, reply = await request([*history, ChatMessage("user", question)],
                                           REPLY_TOKENS)
        rows.append({"session": key, "question": question, "ttft_s": round(ttft, 4),
                     "reply_s": round(total, 4), "reply": reply})
        history += [ChatMessage("user", question), ChatMessage("assistant", reply)]
        await asyncio.sleep(1.0)  # the reply plays; the user then speaks again
    return rows


async def two_sessions(llm: LlamaCppLlm, system: str, reads: Reads) -> list[dict[str, Any]]:
    try:
        results = await asyncio.gather(*(session(llm, f"s{i}", system, script, reads)
                                         for i, script in enumerate(CONVERSATIONS)))
    finally:
        for i in range(len(CONVERSATIONS)):
            llm.release_cache(f"s{i}")
    return [row for rows in results for row in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    reads = Reads()
    timings = logging.getLogger("voxgate.engines.llm_llamacpp.timings")
    timings.setLevel(logging.DEBUG)
    timings.addHandler(reads)
    base = Settings(_env_file=None, offline=True)
    resolved = resolve(MODEL, base.cache_dir, offline=True)
    report: dict[str, Any] = {"load_before": os.getloadavg(), "runs": []}
    for _ in range(args.rounds):
        for slots in (0, 2):
            settings = Settings(_env_file=None, offline=True, llm={"session_slots": slots})
            gc.collect()
            before = rss_mb()
            llm = LlamaCppLlm.load(resolved, settings)
            loaded = rss_mb()
            reads.tokens.clear()
            try:
                rows = asyncio.run(two_sessions(llm, settings.agent.system_prompt, reads))
            finally:
                llm.close()
            run = {"session_slots": slots, "n_ctx": settings.llm.context_tokens
                   + slots * settings.llm.session_slot_tokens,
                   "rss_added_mb": round(loaded - before), "load_1min": os.getloadavg()[0],
                   "prompt_tokens_read": sum(reads.tokens), "requests": len(reads.tokens),
                   "turns": rows}
            report["runs"].append(run)
            print(f"session_slots={slots}: ttft " + " ".join(f"{r['ttft_s']:.2f}" for r in rows)
                  + f"  prompt tokens read {run['prompt_tokens_read']}"
                  + f"  (+{run['rss_added_mb']} MB)", flush=True)
    report["load_after"] = os.getloadavg()
    summary = {}
    for slots in (0, 2):
        rows = [r for run in report["runs"] if run["session_slots"] == slots for r in run["turns"]]
        ttft = sorted(r["ttft_s"] for r in rows)
        summary[str(slots)] = {
            "replies": len(rows), "ttft_p50_s": round(statistics.median(ttft), 3),
            "ttft_max_s": ttft[-1],
            "reply_40_tokens_p50_s": round(statistics.median(r["reply_s"] for r in rows), 3),
            "prompt_tokens_read": [run["prompt_tokens_read"] for run in report["runs"]
                                   if run["session_slots"] == slots],
            "rss_added_mb": [run["rss_added_mb"] for run in report["runs"]
                             if run["session_slots"] == slots]}
    report["summary"] = summary
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "agent_slots.json").write_text(json.dumps(report, indent=2))
    print("| session slots | replies | first token p50 / max | 40 tokens p50 | prompt tokens "
          "read per run | RSS added |")
    print("|---|---|---|---|---|---|")
    for slots, s in summary.items():
        print(f"| {slots} | {s['replies']} | {s['ttft_p50_s']:.2f} / {s['ttft_max_s']:.2f} s | "
              f"{s['reply_40_tokens_p50_s']:.2f} s | {s['prompt_tokens_read']} | "
              f"{s['rss_added_mb']} MB |")
    print(f"1-min load: {report['load_before'][0]:.1f} -> {report['load_after'][0]:.1f}")


if __name__ == "__main__":
    main()
