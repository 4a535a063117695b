"""Riva-compatible translation: ``nvidia.riva.nmt.RivaTranslation`` over gRPC.

Riva NMT clients (``riva.client.NeuralMachineTranslationClient``, NVIDIA's ``nmt.py``,
``nmt_speech_to_text.py``, ``nmt_speech_to_speech.py``) translate with voxgate unchanged. The
stubs come from PyPI ``nvidia-riva-client``; the servicer only maps protobuf <-> voxgate:

* ``TranslateText``: a batch of texts -> the server's Mt engine (the offline LLM translator,
  or a remote Riva NMT), one translation per text in order. ``dnt_phrases`` arrive from the
  official client as ONE string ``"src##dst,src2##"``: ``src##`` (or ``src##src``, or a bare
  ``src``) keeps a phrase as it is, ``src##dst`` forces a translation (a glossary entry).
  ``max_len_variation`` is accepted and ignored.
* ``ListSupportedLanguagePairs``: the Mt engine's source and target languages.
* ``StreamingTranslateSpeechToText`` / ``StreamingTranslateSpeechToSpeech``: see
  :mod:`voxgate.server.riva_nmt_stream`.

Language codes may be ISO-639-1 (``ru``) or BCP-47 (``ru-RU``). Errors: INVALID_ARGUMENT
naming the field (unsupported pair, no texts, too many or too long texts), UNAUTHENTICATED,
RESOURCE_EXHAUSTED past ``VOXGATE_RIVA_NMT_MAX_CONCURRENT`` requests translating at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import riva.client.proto.riva_nmt_pb2 as rnmt
import riva.client.proto.riva_nmt_pb2_grpc as rnmt_grpc

from ..config import Settings
from ..engines.base import Mt, MtOptions
from ..errors import ConfigError, EngineError
from ..languages import primary_language
from ..translation import open_mt
from .grpc_auth import authorize
from .grpc_errors import abort_with_status, take_slot_or_abort
from .limits import TranscriptionSlots, shared_slots
from .state import AppState

__all__ = ["RIVA_NMT_SERVICE", "RivaNmtServicer", "add_riva_nmt", "check_model", "check_pair",
           "held_mt", "mt_model_name", "parse_dnt_phrases", "riva_nmt_language"]

logger = logging.getLogger(__name__)
RIVA_NMT_SERVICE = "nvidia.riva.nmt.RivaTranslation"
_SLOTS_KEY = "riva-nmt-slots"
_MAX_DNT_CHARS = 20_000


class FieldError(ConfigError):
    """A request field is invalid; the message names the Riva field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")


def riva_nmt_language(code: str, field: str) -> str:
    """A Riva language code (``ru-RU``, ``en_US``, ``ru``, ``Russian``) -> voxgate's (``ru``);
    FieldError when it is missing or is not one (``multi`` is no language to translate)."""
    try:
        primary = primary_language(code)
    except ValueError as exc:
        raise FieldError(field, str(exc)) from None
    if primary is None:
        raise FieldError(field, f"required (e.g. 'en' or 'ru-RU'), got {code.strip()[:40]!r}")
    return primary


def parse_dnt_phrases(entries: Any) -> MtOptions:
    """Riva ``dnt_phrases`` -> MtOptions (dnt phrases and glossary).

    The official client joins every ``src##dst`` pair into one string with commas; other
    clients may send one pair per entry. An empty or identical ``dst`` keeps ``src`` as it is.
    """
    dnt: list[str] = []
    glossary: list[tuple[str, str]] = []
    if sum(len(e) for e in entries) > _MAX_DNT_CHARS:
        raise FieldError("dnt_phrases", f"longer than {_MAX_DNT_CHARS} characters")
    for entry in entries:
        for item in entry.split(","):
            src, _, dst = item.partition("##")
            src, dst = " ".join(src.split()), " ".join(dst.split())
            if not src:
                if dst:
                    raise FieldError("dnt_phrases", f"{item.strip()[:60]!r} has no source "
                                                    "phrase before '##'")
                continue
            if not dst or dst == src:
                if src not in dnt:
                    dnt.append(src)
            elif (src, dst) not in glossary:
                glossary.append((src, dst))
    return MtOptions(dnt=tuple(dnt), glossary=tuple(glossary))


def mt_model_name(settings: Settings) -> str:
    """The name the server's translator is listed under: the LLM's catalogue id when
    ``VOXGATE_TRANSLATION__MT=llm``, else the mt catalogue id itself."""
    if settings.translation.mt == "llm":
        from ..postprocess import llm_model_id

        return llm_model_id(settings)
    return settings.translation.mt


def check_model(model: str, settings: Settings, field: str = "model") -> None:
    """FieldError unless ``model`` is empty or names the server's translator (clients never
    choose another model: nothing is loaded or downloaded for them)."""
    offered = mt_model_name(settings)
    if model and model not in (offered, settings.translation.mt):
        raise FieldError(field, f"{model[:80]!r} is not offered; this server translates with "
                                f"{offered!r} (ListSupportedLanguagePairs)")


def check_pair(languages: tuple[str, ...], source: str, target: str) -> None:
    """FieldError unless ``source`` -> ``target`` is offered (no languages known: any two
    different languages; the engine itself judges)."""
    pairs = ", ".join(f"{s}->{t}" for s in languages for t in languages if s != t)
    for field, code in (("source_language", source), ("target_language", target)):
        if languages and code not in languages:
            raise FieldError(field, f"{code!r} is not supported; language pairs: {pairs}")
    if source == target:
        raise FieldError("target_language", f"same as source_language ({source!r}); "
                                            f"language pairs: {pairs or 'any two languages'}")


def mt_languages(engine: Mt) -> tuple[str, ...]:
    """What an engine translates (blocking for a remote engine: it asks its server once)."""
    return tuple(getattr(engine, "languages", ()))


@contextlib.asynccontextmanager
async def held_mt(state: AppState) -> AsyncIterator[Mt]:
    """The configured Mt engine (``VOXGATE_TRANSLATION__MT``), held while the block runs
    (loaded in a worker thread on first use)."""
    with contextlib.ExitStack() as stack:
        yield await asyncio.to_thread(stack.enter_context,
                                      open_mt(state.settings, state.manager))


def nmt_slots(state: AppState) -> TranscriptionSlots:
    """Server-wide bound on TranslateText requests translating at once."""
    return shared_slots(state, _SLOTS_KEY, state.settings.riva_nmt_max_concurrent)


async def fail(context: grpc.aio.ServicerContext, exc: BaseException, what: str) -> None:
    """Abort the call with the status code that fits ``exc`` (shared by the NMT RPCs; a
    FieldError's message names its field, a ModelError's is the catalogue's own)."""
    await abort_with_status(context, exc, logger, f"Riva NMT {what}", fields={})


class RivaNmtServicer(rnmt_grpc.RivaTranslationServicer):
    """Maps Riva NMT requests onto voxgate's Mt engine and TranslateSession."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        self.settings = state.settings

    # ---- TranslateText -------------------------------------------------------------------
    def _check_texts(self, texts: Any) -> list[str]:
        settings = self.settings
        if not texts:
            raise FieldError("texts", "empty: send at least one text")
        if len(texts) > settings.riva_nmt_max_texts:
            raise FieldError("texts", f"{len(texts)} texts exceed the limit of "
                                      f"{settings.riva_nmt_max_texts} per request "
                                      "(VOXGATE_RIVA_NMT_MAX_TEXTS); send smaller batches")
        total = sum(len(t) for t in texts)
        if total > settings.riva_nmt_max_chars:
            raise FieldError("texts", f"{total} characters exceed the limit of "
                                      f"{settings.riva_nmt_max_chars} per request "
                                      "(VOXGATE_RIVA_NMT_MAX_CHARS); send smaller batches")
        return [" ".join(t.split()) for t in texts]

    async def TranslateText(self, request: rnmt.TranslateTextRequest,
                            context: grpc.aio.ServicerContext) -> rnmt.TranslateTextResponse:
        await authorize(self.settings, context)
        try:
            texts = self._check_texts(request.texts)
            source = riva_nmt_language(request.source_language, "source_language")
            target = riva_nmt_language(request.target_language, "target_language")
            options = parse_dnt_phrases(request.dnt_phrases)
            check_model(request.model, self.settings)
        except Exception as exc:  # mapped to a status code
            await fail(context, exc, "TranslateText")
            raise
        slots = nmt_slots(self.state)
        await take_slot_or_abort(context, slots, "translations",
                                 "VOXGATE_RIVA_NMT_MAX_CONCURRENT")
        try:
            async with held_mt(self.state) as engine:
                check_pair(await asyncio.to_thread(mt_languages, engine), source, target)
                outputs = await translate_texts(engine, texts, source, target, options)
        except Exception as exc:
            await fail(context, exc, "TranslateText")
            raise
        finally:
            slots.release()
        response = rnmt.TranslateTextResponse()
        for text in outputs:
            response.translations.add(text=text, language=request.target_language)
        if request.HasField("id"):
            response.id.CopyFrom(request.id)
        return response

    # ---- ListSupportedLanguagePairs ------------------------------------------------------
    async def ListSupportedLanguagePairs(self, request: rnmt.AvailableLanguageRequest,
                                         context: grpc.aio.ServicerContext
                                         ) -> rnmt.AvailableLanguageResponse:
        await authorize(self.settings, context)
        try:
            async with held_mt(self.state) as engine:
                languages = await asyncio.to_thread(mt_languages, engine)
        except Exception as exc:
            await fail(context, exc, "ListSupportedLanguagePairs")
            raise
        response = rnmt.AvailableLanguageResponse()
        name = mt_model_name(self.settings)
        if not request.model or request.model in (name, self.settings.translation.mt):
            pair = response.languages[name]
            pair.src_lang.extend(languages)
            pair.tgt_lang.extend(languages)
        return response

    # ---- streaming -----------------------------------------------------------------------
    async def StreamingTranslateSpeechToText(self, request_iterator: AsyncIterator[Any],
                                             context: grpc.aio.ServicerContext
                                             ) -> AsyncIterator[Any]:
        await authorize(self.settings, context)
        from .riva_nmt_stream import speech_to_text

        async for response in speech_to_text(self.state, request_iterator, context):
            yield response

    async def StreamingTranslateSpeechToSpeech(self, request_iterator: AsyncIterator[Any],
                                               context: grpc.aio.ServicerContext
                                               ) -> AsyncIterator[Any]:
        await authorize(self.settings, context)
        from .riva_nmt_stream import speech_to_speech

        async for response in speech_to_speech(self.state, request_iterator, context):
            yield response


async def translate_texts(engine: Mt, texts: list[str], source: str, target: str,
                          options: MtOptions) -> list[str]:
    """One translation per text, in order (an empty text stays empty, costing nothing)."""
    todo = [i for i, t in enumerate(texts) if t]
    outputs = [""] * len(texts)
    if not todo:
        return outputs
    batch = getattr(engine, "translate_batch", None)
    if batch is not None:
        done = await batch([texts[i] for i in todo], source, target, options=options)
    else:
        done = [await engine.translate(texts[i], source, target, options=options) for i in todo]
    if len(done) != len(todo):
        raise EngineError(f"the {engine.name} translator returned {len(done)} translations "
                          f"for {len(todo)} texts")
    for i, text in zip(todo, done, strict=True):
        outputs[i] = text
    return outputs


def add_riva_nmt(server: grpc.aio.Server, state: AppState) -> str:
    """Register the servicer on ``server``; returns its service name (for health)."""
    rnmt_grpc.add_RivaTranslationServicer_to_server(RivaNmtServicer(state), server)
    return RIVA_NMT_SERVICE
