"""The conversation an agent keeps: items with ids, and the LLM messages cut to a token budget.

Items are what the OpenAI Realtime API calls conversation items (``item_id`` is stable,
``conversation.item.delete/truncate`` act on it). :meth:`Conversation.messages` gives the LLM
the system prompt plus the newest items that fit ``budget_tokens``; when the history outgrows
the budget, the oldest items are dropped down to half of it at once (not one per turn), so the
prompt prefix stays the same for several turns and the LLM's KV cache keeps serving it.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field

from ..engines.base import ChatMessage
from ..errors import ConfigError

__all__ = ["Conversation", "Item", "estimate_tokens"]

_ids = itertools.count(1)


def estimate_tokens(text: str) -> int:
    """A tokenizer-free estimate (~4 characters a token for English, +4 per message), enough
    to keep a prompt inside a context window with margin; engines differ anyway."""
    return len(text) // 4 + 4


@dataclass(slots=True)
class Item:
    """One message of the conversation. ``audio_s``: for a spoken assistant item, the seconds
    of its audio played (what a truncation keeps)."""

    id: str
    role: str
    text: str
    turn_id: int = -1
    audio_s: float = 0.0
    interrupted: bool = False


@dataclass
class Conversation:
    """Ordered items plus the system prompt; never holds audio."""

    system_prompt: str
    budget_tokens: int = 2048
    items: list[Item] = field(default_factory=list)
    _first: int = 0  # index of the first item still sent to the LLM

    def add(self, role: str, text: str, turn_id: int = -1, *, after: str | None = None) -> Item:
        """Append an item (or insert it after item ``after``); ConfigError for a bad role."""
        if role not in ("user", "assistant", "system"):
            raise ConfigError(f"role must be user, assistant or system, got {role!r}")
        item = Item(f"item_{next(_ids):06d}", role, text, turn_id)
        if after is None:
            self.items.append(item)
        else:
            self.items.insert(self.index(after) + 1, item)
        return item

    def index(self, item_id: str) -> int:
        for i, item in enumerate(self.items):
            if item.id == item_id:
                return i
        raise ConfigError(f"no conversation item {item_id!r}")

    def get(self, item_id: str) -> Item:
        return self.items[self.index(item_id)]

    def delete(self, item_id: str) -> Item:
        i = self.index(item_id)
        if i < self._first:
            self._first -= 1
        return self.items.pop(i)

    def last(self, role: str) -> Item | None:
        for item in reversed(self.items):
            if item.role == role:
                return item
        return None

    def messages(self, extra_system: str | None = None) -> list[ChatMessage]:
        """System prompt + the newest items within the budget (at least the last one)."""
        system = self.system_prompt + (f"\n{extra_system}" if extra_system else "")
        used = estimate_tokens(system)
        kept = [i for i in self.items[self._first:] if i.text.strip()]
        total = used + sum(estimate_tokens(i.text) for i in kept)
        if total > self.budget_tokens and kept:
            # drop the oldest down to half the budget, in one go (the prefix then stays stable)
            target = used + max(self.budget_tokens - used, 0) // 2
            while len(kept) > 1 and total > target:
                total -= estimate_tokens(kept[0].text)
                self._first = self.items.index(kept[0]) + 1
                kept.pop(0)
            while len(kept) > 1 and kept[0].role == "assistant":  # start with the user
                self._first = self.items.index(kept[0]) + 1
                kept.pop(0)
        out = [ChatMessage("system", system)] if system.strip() else []
        out.extend(ChatMessage(i.role, i.text) for i in kept)  # type: ignore[arg-type]
        return out


def cut_words(text: str, fraction: float) -> str:
    """The first ``fraction`` (0..1) of ``text`` by characters, cut back to a whole word: the
    part of a sentence heard when its audio was stopped that far in."""
    if fraction >= 1.0:
        return text
    if fraction <= 0.0:
        return ""
    limit = int(len(text) * fraction)
    words = list(re.finditer(r"\S+", text))
    kept = [w for w in words if w.end() <= limit]
    return text[:kept[-1].end()] if kept else ""
