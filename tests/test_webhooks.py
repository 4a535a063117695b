"""Webhooks: public targets only (unless the operator allows more), checked again at every
delivery and pinned to the checked address, signatures over timestamp + body, replay rejection
on the receiving side. A real HTTP receiver on loopback; DNS answers are injected."""

from __future__ import annotations

import ipaddress
import json
import logging
import time

import pytest
from jobs_support import Receiver

from voxgate.errors import ConfigError
from voxgate.webhooks import (
    ReplayGuard,
    check_webhook_target,
    deliver,
    sign,
    validate_webhook_url,
    verify,
)

SECRET = "webhook-secret"


def _resolver(*addresses: str):
    def resolve(host: str, port: int):
        return [ipaddress.ip_address(a) for a in addresses]
    return resolve


def test_url_syntax() -> None:
    assert validate_webhook_url("https://example.org/hook") == "https://example.org/hook"
    for bad in ("ftp://x/y", "file:///etc/passwd", "javascript:alert(1)", "http:///nohost",
                "http://x:99999/"):
        with pytest.raises(ConfigError):
            validate_webhook_url(bad)


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.0.0.2", "::1", "10.0.0.5", "172.16.3.4", "192.168.1.1",
    "169.254.169.254",  # AWS/GCP/Azure instance metadata
    "100.100.100.200",  # Alibaba metadata (shared address space)
    "fd00:ec2::254",  # AWS metadata over IPv6
    "::ffff:127.0.0.1", "0.0.0.0", "224.0.0.1", "fe80::1", "240.0.0.1",
])
def test_non_public_targets_are_refused(address: str) -> None:
    with pytest.raises(ConfigError, match="VOXGATE_WEBHOOK_ALLOWED_HOSTS") as caught:
        check_webhook_target("http://hooks.example/x", resolve=_resolver(address))
    assert address not in str(caught.value)  # the refusal tells nothing of internal DNS


def test_one_private_address_among_public_ones_is_enough_to_refuse() -> None:
    with pytest.raises(ConfigError):
        check_webhook_target("https://hooks.example/x",
                             resolve=_resolver("93.184.216.34", "10.1.2.3"))
    assert str(check_webhook_target("https://hooks.example/x",
                                    resolve=_resolver("93.184.216.34"))) == "93.184.216.34"


def test_operator_allowlist_by_host_address_or_network() -> None:
    url = "http://hooks.internal:8080/x"
    loopback = _resolver("127.0.0.1")
    for allowed in (["hooks.internal"], ["127.0.0.1"], ["127.0.0.0/8"], ["HOOKS.internal"]):
        assert str(check_webhook_target(url, allowed, resolve=loopback)) == "127.0.0.1"
    with pytest.raises(ConfigError):
        check_webhook_target(url, ["10.0.0.0/8", "other.internal"], resolve=loopback)


def test_unresolvable_host_is_refused() -> None:
    def fail(host, port):
        raise OSError("no such host")
    with pytest.raises(ConfigError, match="does not resolve"):
        check_webhook_target("http://nowhere.invalid/x", resolve=fail)


def test_signature_covers_timestamp_and_body() -> None:
    body, now = b'{"status":"COMPLETE"}', int(time.time())
    signature = sign(SECRET, body, str(now))
    assert signature.startswith("sha256=") and verify(SECRET, body, signature, str(now))
    assert not verify(SECRET, body + b" ", signature, str(now))
    assert not verify("other", body, signature, str(now))
    assert not verify(SECRET, body, signature, str(now + 1))  # the timestamp is signed
    old = str(now - 3600)
    assert not verify(SECRET, body, sign(SECRET, body, old), old)  # outside the window
    assert not verify(SECRET, body, signature, "soon")


def test_delivery_rechecks_the_target_and_pins_the_checked_address(caplog) -> None:
    """DNS rebinding: a name that resolved to a public address when the job was submitted
    resolves to loopback at delivery time; nothing is sent. Allowed, the request goes to the
    checked address with the original Host header, and the receiver's recipe accepts it once."""
    receiver = Receiver()
    port = receiver.server.server_address[1]
    url = f"http://hooks.example:{port}/hook?token=do-not-log-me"
    payload = {"task_id": "t-1", "status": "COMPLETE"}
    try:
        check_webhook_target(url, resolve=_resolver("93.184.216.34"))  # at submission: public
        with caplog.at_level(logging.INFO, logger="voxgate.webhooks"):
            sent = deliver(url, payload, SECRET, attempts=1, resolve=_resolver("127.0.0.1"))
        assert sent is False and receiver.calls == []
        assert "hooks.example" in caplog.text and "do-not-log-me" not in caplog.text
        assert "/hook" not in caplog.text
        assert deliver(url, payload, "", attempts=1, allowed_hosts=["hooks.example"],
                       resolve=_resolver("127.0.0.1")) is False  # no secret: never unsigned

        assert deliver(url, payload, SECRET, attempts=1, allowed_hosts=["hooks.example"],
                       resolve=_resolver("127.0.0.1"))
        headers, body = receiver.wait(1)[0]
        assert headers["host"] == f"hooks.example:{port}"
        assert json.loads(body) == payload
        guard = ReplayGuard(SECRET)
        assert guard.accept(headers, body)
        assert not guard.accept(headers, body)  # the same request replayed
        tampered = {**headers, "x-voxgate-timestamp": str(int(headers["x-voxgate-timestamp"]) + 1)}
        assert not ReplayGuard(SECRET).accept(tampered, body)
        assert not ReplayGuard(SECRET).accept(headers, body, now=time.time() + 3600)
        assert not ReplayGuard("other").accept(headers, body)
    finally:
        receiver.close()
