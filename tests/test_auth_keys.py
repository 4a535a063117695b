"""The one rule for reading an API key off a request (HTTP, WebSocket and gRPC share it)."""

from __future__ import annotations

import pytest

from voxgate.server.deps import api_key_from_headers, presented_key


@pytest.mark.parametrize("x_api_key, authorization, bare, expected", [
    ("k", "Bearer other", False, "k"),  # X-API-Key wins
    (None, "Bearer k", False, "k"),
    (None, "bearer   k ", False, "k"),
    (" ", "Bearer k", False, "k"),  # a blank X-API-Key is no key
    (None, "k", False, None),  # HTTP: a bare authorization value is not a bearer token
    (None, "k", True, "k"),  # gRPC: Riva's clients send the bare key
    (None, "Basic dXNlcjpwdw==", True, None),  # another scheme is never taken for a key
    (None, None, True, None),
])
def test_presented_key(x_api_key, authorization, bare, expected) -> None:
    assert presented_key(x_api_key, authorization, bare_authorization=bare) == expected


def test_headers_use_the_same_rule() -> None:
    assert api_key_from_headers({"authorization": "Bearer k"}) == "k"
    assert api_key_from_headers({"x-api-key": "k2", "authorization": "Bearer k"}) == "k2"
    assert api_key_from_headers({"authorization": "k"}) is None
