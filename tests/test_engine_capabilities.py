"""What an engine can do is stated once, by the engine: the same before and after loading."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("model_id", ["whisper-base", "whisper-tiny.en"])
def test_capabilities_before_loading_are_what_the_loaded_engine_reports(manager, model_id):
    """``GET /v1/models`` asks the engine class for a model not loaded yet: the answer must be
    the one the loaded engine gives, languages aside (one copy of the facts, no drift)."""
    from dataclasses import asdict

    from voxgate.engines import load_engine_class
    from voxgate.models import get_spec

    spec = get_spec(model_id)
    declared = asdict(load_engine_class("asr", spec.engine).capabilities_of(spec))
    loaded = asdict(manager.asr(model_id).capabilities)
    for caps in (declared, loaded):
        caps.pop("languages")
    assert declared == loaded


def test_every_asr_engine_declares_its_capabilities():
    from voxgate.engines import engine_names, load_engine_class
    from voxgate.engines.base import AsrCapabilities
    from voxgate.models import list_specs

    for name in engine_names("asr"):
        assert callable(getattr(load_engine_class("asr", name), "capabilities_of", None)), name
    for spec in list_specs("asr"):
        caps = load_engine_class("asr", spec.engine).capabilities_of(spec)
        assert isinstance(caps, AsrCapabilities), spec.id
