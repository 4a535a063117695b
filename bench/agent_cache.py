"""Voice agent: llama.cpp's prompt (KV) cache on vs off, turn by turn of one conversation.

The agent sends the whole conversation every turn; with ``cache_prompt`` llama.cpp keeps the KV
cache of the previous request and evaluates only the part of the new prompt that differs (the
new user turn), so time to first token stops growing with the conversation. The jobs path keeps
it off (``_NO_PROMPT_CACHE`` in ``engines/llm_llamacpp.py``: bit-exact reproducibility). This
runs the same 6-turn conversation (the agent's default system prompt, short canned replies in
the history) both ways, alternating, and reports per turn the prompt tokens llama.cpp evaluated
and the prompt time (llama.cpp's own ``timings``, one generated token).

    python bench/agent_cache.py [--rounds 2]      # writes bench/results/agent_cache.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from voxgate.config import Settings
from voxgate.engines.base import ChatMessage
from voxgate.engines.llm_openai import chat_body
from voxgate.engines.manager import ModelManager
from voxgate.engines.priority import Priority

RESULTS = Path(__file__).resolve().parent / "results"
TURNS = [("Hi, who are you?", "I am a voice assistant."),
         ("What is the capital of France?", "The capital of France is Paris."),
         ("And how many people live there?", "About two million people live in Paris."),
         ("When is a good time to visit?", "Spring and autumn are good times to visit."),
         ("Which museums should I see?", "See the Louvre and the Musee d'Orsay."),
         ("How do I get there from London?", "")]


def conversation(llm, system: str, cache: bool) -> list[dict[str, float]]:
    server = llm._server_for(Priority.LIVE_FINAL)  # the agent's (live) llama.cpp server
    history = [ChatMessage("system", system)]
    out = []
    for question, answer in TURNS:
        history.append(ChatMessage("user", question))
        body = chat_body(history, max_tokens=1, temperature=0.0, seed=42, json_schema=None)
        body["cache_prompt"] = cache
        timings = server.handle_chat_completions(body).get("timings", {})
        out.append({"prompt_tokens": timings.get("prompt_n", 0),
                    "cached_tokens": timings.get("cache_n", 0),
                    "prompt_ms": round(timings.get("prompt_ms", 0.0), 1)})
        if answer:
            history.append(ChatMessage("assistant", answer))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    settings = Settings(_env_file=None, offline=True)
    llm = ModelManager(settings).get("llm", settings.llm.model)
    runs: dict[str, list[list[dict[str, float]]]] = {"on": [], "off": []}
    for _ in range(args.rounds):
        for mode in ("on", "off"):
            runs[mode].append(conversation(llm, settings.agent.system_prompt, mode == "on"))
    table = []
    for turn in range(len(TURNS)):
        row = {"turn": turn + 1}
        for mode in ("on", "off"):
            turns = [run[turn] for run in runs[mode]][1:] or [run[turn] for run in runs[mode]]
            row[f"{mode}_tokens"] = turns[-1]["prompt_tokens"]
            row[f"{mode}_ms"] = round(statistics.median(t["prompt_ms"] for t in turns), 1)
        row["ratio"] = round(row["off_ms"] / row["on_ms"], 2) if row["on_ms"] else None
        table.append(row)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "agent_cache.json").write_text(json.dumps({"turns": table, "runs": runs},
                                                         indent=2) + "\n")
    print("| turn | prompt tokens, cache on | off | prompt ms, on | off | off / on |")
    print("|---|---|---|---|---|---|")
    for r in table:
        print(f"| {r['turn']} | {r['on_tokens']} | {r['off_tokens']} | {r['on_ms']} | "
              f"{r['off_ms']} | {r['ratio']} |")


if __name__ == "__main__":
    main()
