"""Any NVIDIA Riva NMT server (or another voxgate) as voxgate's translation engine, over gRPC.

Text goes out with ``RivaTranslation.TranslateText`` through the official ``nvidia-riva-client``
stubs; the connection (URI, TLS, API-key metadata, per-call timeout, retries with exponential
backoff on ``UNAVAILABLE``) is :class:`~voxgate.engines.riva_channel.RivaChannel`'s, shared
with the Riva ASR and TTS engines.

voxgate speaks ISO-639-1 codes (``en``, ``ru``); Riva servers may name the same languages
``en-US`` / ``ru-RU``. The server's ``ListSupportedLanguagePairs`` is asked once and each
code is sent in the server's own spelling (a server that cannot list: the code as it is).
Do-not-translate phrases and glossary entries travel as Riva's ``dnt_phrases`` string
(``"src##dst,src2##"``, as the official client builds it); the previous-utterance context has
no Riva field and is not sent.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import ConfigError, EngineError
from ..languages import primary_language
from .base import MtOptions
from .riva_channel import RivaChannel, RivaOptions

__all__ = ["RivaMt", "dnt_field"]

logger = logging.getLogger(__name__)


def dnt_field(options: MtOptions | None) -> str:
    """``options``' do-not-translate phrases and glossary as one Riva ``dnt_phrases`` string.

    ``phrase##`` keeps a phrase as it is, ``src##dst`` forces a translation (the official
    client's ``add_dnt_phrases_dict`` format). Riva's format cannot carry a comma or ``##``
    inside a phrase, so such a phrase is refused rather than silently split.
    """
    if options is None:
        return ""
    pairs = [(p, "") for p in options.dnt] + list(options.glossary)
    for src, dst in pairs:
        for part in (src, dst):
            if "," in part or "##" in part:
                raise ConfigError(f"Riva dnt_phrases cannot carry {part!r} (no ',' or '##' "
                                  "inside a phrase)")
    return ",".join(f"{src}##{dst}" for src, dst in pairs if src.strip())


def _primary(code: str) -> str:
    """A code's primary language (``ru-RU`` -> ``ru``); one that is none stays as it is."""
    try:
        return primary_language(code) or code
    except ValueError:
        return code


class RivaMt:
    """A Riva NMT server behind voxgate's :class:`~voxgate.engines.base.Mt` protocol."""

    name = "riva"

    def __init__(self, options: RivaOptions, *, model: str = "",
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._channel = RivaChannel(options, "the Riva NMT engine", sleep=sleep)
        import riva.client.proto.riva_nmt_pb2 as rnmt
        import riva.client.proto.riva_nmt_pb2_grpc as rnmt_grpc

        self.options = options
        self.model = model
        self._rnmt = rnmt
        self._stub = rnmt_grpc.RivaTranslationStub(self._channel.auth.channel)
        self._codes: dict[str, set[str]] | None = None  # primary code -> server spellings
        self._lock = threading.Lock()

    @classmethod
    def load(cls, resolved: Any, settings: Any) -> RivaMt:
        return cls(RivaOptions.from_settings(settings), model=settings.riva.nmt_model)

    @property
    def calls(self) -> int:
        """RPC attempts, retries included (observability and tests)."""
        return self._channel.calls

    def close(self) -> None:
        self._channel.close()

    # ---- language pairs ------------------------------------------------------------------
    def language_pairs(self) -> dict[str, tuple[list[str], list[str]]]:
        """The server's models -> (source codes, target codes), as it lists them."""
        request = self._rnmt.AvailableLanguageRequest(model=self.model)
        response = self._channel.with_retries("ListSupportedLanguagePairs", lambda: (
            self._stub.ListSupportedLanguagePairs(request, metadata=self._channel.metadata,
                                                  timeout=self.options.timeout_s)))
        return {name: (list(pair.src_lang), list(pair.tgt_lang))
                for name, pair in response.languages.items()}

    @property
    def languages(self) -> tuple[str, ...]:
        """The server's languages as ISO-639-1 codes (blocking: asks it once; () if it
        cannot list them)."""
        return tuple(sorted(self._server_codes()))

    def _server_codes(self) -> dict[str, set[str]]:
        """Primary code -> the server's spellings of it (asked once; {} if it cannot list)."""
        with self._lock:
            if self._codes is None:
                codes: dict[str, set[str]] = {}
                try:
                    pairs = self.language_pairs()
                except EngineError as exc:
                    if "UNIMPLEMENTED" not in str(exc):
                        raise
                    logger.info("Riva at %s lists no language pairs; codes sent as given",
                                self.options.uri)
                    pairs = {}
                for sources, targets in pairs.values():
                    for code in (*sources, *targets):
                        codes.setdefault(_primary(code), set()).add(code)
                self._codes = codes
            return self._codes

    def _code(self, code: str) -> str:
        """``code`` as the server spells it: itself if listed, else the one listed variant."""
        spellings = self._server_codes().get(_primary(code), set())
        if not spellings or code in spellings:
            return code
        return min(spellings, key=lambda c: (c.count("-"), c))

    # ---- Mt protocol ---------------------------------------------------------------------
    async def translate(self, text: str, source: str, target: str, *,
                        options: MtOptions | None = None) -> str:
        """One text translated by the Riva server."""
        return (await self.translate_batch([text], source, target, options=options))[0]

    async def translate_batch(self, texts: Sequence[str], source: str, target: str,
                              options: MtOptions | None = None) -> list[str]:
        """Several texts in one ``TranslateText`` call; one output per input, in order."""
        return await asyncio.to_thread(self._translate, list(texts), source, target, options)

    def _translate(self, texts: list[str], source: str, target: str,
                   options: MtOptions | None) -> list[str]:
        if not texts:
            return []
        dnt = dnt_field(options)
        request = self._rnmt.TranslateTextRequest(
            texts=texts, model=self.model, source_language=self._code(source),
            target_language=self._code(target))
        if dnt:
            request.dnt_phrases.append(dnt)
        response = self._channel.with_retries("TranslateText", lambda: self._stub.TranslateText(
            request, metadata=self._channel.metadata, timeout=self.options.timeout_s))
        outputs = [t.text for t in response.translations]
        if len(outputs) != len(texts):
            raise EngineError(f"Riva TranslateText at {self.options.uri} returned "
                              f"{len(outputs)} translations for {len(texts)} texts")
        return outputs
