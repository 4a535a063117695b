"""Job webhooks: POST the final status JSON, signed, retried with backoff, never fatal.

Targets: only http(s) URLs whose host resolves to public addresses. Loopback, private,
link-local (cloud metadata at 169.254.169.254), shared, multicast and reserved addresses are
refused unless ``webhook_allowed_hosts`` names the host, the address or a network holding it.
The check runs when the job is submitted and again before every delivery attempt, and the
request goes to the very address that was checked (``Host`` header and TLS name unchanged), so a
DNS answer that changes in between (rebinding) cannot redirect it. Logs name the host only.

Signatures: HMAC-SHA256 under ``webhook_secret`` (a secret of its own; jobs with a webhook are
refused while it is empty) over ``<timestamp>.<raw body>``, sent as ``X-Voxgate-Signature:
sha256=<hex>`` with ``X-Voxgate-Timestamp`` (Unix seconds) and ``X-Voxgate-Delivery`` (one id per
delivery, the same on every retry). A receiver (:class:`ReplayGuard` does it):

1. recompute the HMAC over ``X-Voxgate-Timestamp + "." + raw body`` and compare in constant time;
2. reject a timestamp more than 5 minutes from its clock (an old capture replayed later);
3. remember each ``X-Voxgate-Delivery`` for those 5 minutes and reject one seen before (a fresh
   capture replayed at once, or a retry of a delivery that already succeeded).

Delivery runs in a thread of a :class:`WebhookSender`, so a slow receiver never holds up the next
job; a worker calls :meth:`WebhookSender.drain` before it exits (``--burst``, SIGTERM, server
shutdown), which waits for every delivery in flight for up to its whole retry schedule, so exiting
right after a job never cuts a delivery short.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from .config import Settings
from .errors import ConfigError
from .log_setup import in_context

__all__ = [
    "DELIVERY_HEADER",
    "REPLAY_WINDOW_S",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "ReplayGuard",
    "WebhookSender",
    "check_webhook_target",
    "deliver",
    "delivery_budget_s",
    "sign",
    "signing_secret",
    "validate_webhook_url",
    "verify",
]

logger = logging.getLogger(__name__)
SIGNATURE_HEADER = "X-Voxgate-Signature"
TIMESTAMP_HEADER = "X-Voxgate-Timestamp"
DELIVERY_HEADER = "X-Voxgate-Delivery"
REPLAY_WINDOW_S = 300
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[IpAddress]]


def validate_webhook_url(url: str) -> str:
    """The URL if it is http(s) with a host; ``ConfigError`` otherwise (no file:, gopher:...)."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"webhook_url must be an http:// or https:// URL, got {url[:100]!r}")
    if len(url) > 2048:
        raise ConfigError("webhook_url is longer than 2048 characters")
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise ConfigError("webhook_url has an invalid port") from None
    return url.strip()


def _resolve(host: str, port: int) -> list[IpAddress]:
    """Every address ``host`` resolves to (an IP literal: itself)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]


def _public(ip: IpAddress) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def _allowed(host: str, ip: IpAddress, allowed_hosts: Iterable[str]) -> bool:
    for entry in allowed_hosts:
        entry = entry.strip().lower()
        if entry == host.lower():
            return True
        try:
            if ip in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue  # a host name, not an address or network
    return False


def check_webhook_target(url: str, allowed_hosts: Iterable[str] = (),
                         resolve: Resolver | None = None) -> IpAddress:
    """The address to deliver ``url`` to; ``ConfigError`` when any address of its host is not
    public and ``allowed_hosts`` does not permit it (blocking: DNS)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    allowed_hosts = list(allowed_hosts)
    try:
        addresses = (resolve or _resolve)(host, port)
    except (OSError, UnicodeError, ValueError):
        raise ConfigError(f"webhook_url host {host!r} does not resolve") from None
    if not addresses:
        raise ConfigError(f"webhook_url host {host!r} does not resolve")
    for ip in addresses:
        if not _public(ip) and not _allowed(host, ip, allowed_hosts):
            raise ConfigError(
                f"webhook_url host {host!r} is a loopback, private, link-local or reserved "
                "address; refused (an operator may allow it with VOXGATE_WEBHOOK_ALLOWED_HOSTS)")
    return addresses[0]


def signing_secret(settings: Settings) -> str:
    """The webhook secret (its own setting; never an API key)."""
    return settings.webhook_secret


def _signed(timestamp: str, body: bytes) -> bytes:
    return timestamp.encode() + b"." + body


def sign(secret: str, body: bytes, timestamp: str) -> str:
    """``sha256=<hex>`` of HMAC-SHA256(secret, ``timestamp.body``)."""
    return "sha256=" + hmac.new(secret.encode(), _signed(timestamp, body),
                                hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, signature: str, timestamp: str, *,
           tolerance_s: float = REPLAY_WINDOW_S, now: float | None = None) -> bool:
    """A receiver's check: the signature matches and the timestamp is within ``tolerance_s``."""
    try:
        sent = int(timestamp)
    except (TypeError, ValueError):
        return False
    if abs((time.time() if now is None else now) - sent) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, body, str(timestamp)), signature or "")


class ReplayGuard:
    """The receiving side's recipe: accept each signed delivery once, within the window.

    ``accept(headers, body)`` is True for a correctly signed, fresh delivery not seen before; a
    replayed request (same ``X-Voxgate-Delivery``), an old or future timestamp, a changed body
    or timestamp are refused. Delivery ids are forgotten once their timestamp leaves the window.
    """

    def __init__(self, secret: str, tolerance_s: float = REPLAY_WINDOW_S) -> None:
        self.secret = secret
        self.tolerance_s = tolerance_s
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def accept(self, headers: Mapping[str, str], body: bytes, now: float | None = None) -> bool:
        lower = {k.lower(): v for k, v in headers.items()}
        timestamp = lower.get(TIMESTAMP_HEADER.lower(), "")
        delivery = lower.get(DELIVERY_HEADER.lower(), "")
        now = time.time() if now is None else now
        if not delivery or not verify(self.secret, body, lower.get(SIGNATURE_HEADER.lower(), ""),
                                      timestamp, tolerance_s=self.tolerance_s, now=now):
            return False
        with self._lock:
            self._seen = {d: t for d, t in self._seen.items() if now - t <= 2 * self.tolerance_s}
            if delivery in self._seen:
                return False
            self._seen[delivery] = int(timestamp)
        return True


def deliver(url: str, payload: dict[str, Any], secret: str, *, attempts: int = 5,
            timeout_s: float = 10.0, base_delay_s: float = 0.5,
            allowed_hosts: Iterable[str] = (), resolve: Resolver | None = None) -> bool:
    """POST ``payload``; retry connection errors and 5xx/429 with exponential backoff.

    Every attempt checks the target again and connects to the address it checked.
    """
    import httpx

    host = urlsplit(url).hostname or "?"
    if not secret:
        logger.warning("webhook to host %s not sent: VOXGATE_WEBHOOK_SECRET is empty", host)
        return False
    allowed_hosts = list(allowed_hosts)
    body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    delivery = uuid.uuid4().hex
    target = httpx.URL(url)
    with httpx.Client(timeout=timeout_s, follow_redirects=False, trust_env=False) as client:
        for attempt in range(attempts):
            try:
                ip = check_webhook_target(url, allowed_hosts, resolve)
            except ConfigError as exc:
                logger.warning("webhook to host %s refused at delivery: %s", host, exc)
                return False
            timestamp = str(int(time.time()))
            headers = {"Content-Type": "application/json", "User-Agent": "voxgate-webhook/1",
                       "Host": target.netloc.decode("ascii"),
                       "X-Voxgate-Task": str(payload.get("task_id", "")),
                       TIMESTAMP_HEADER: timestamp, DELIVERY_HEADER: delivery,
                       SIGNATURE_HEADER: sign(secret, body, timestamp)}
            try:
                response = client.post(target.copy_with(host=str(ip)), content=body,
                                       headers=headers, extensions={"sni_hostname": host})
                if response.status_code < 400:
                    return True
                reason = f"HTTP {response.status_code}"
                if response.status_code < 500 and response.status_code != 429:
                    logger.warning("webhook to host %s refused (%s); not retrying", host, reason)
                    return False
            except httpx.HTTPError as exc:
                reason = type(exc).__name__
            if attempt + 1 < attempts:
                delay = base_delay_s * 2 ** attempt
                logger.info("webhook to host %s failed (%s); retry in %.1fs", host, reason, delay)
                time.sleep(delay)  # backoff between delivery attempts
    logger.warning("webhook to host %s failed after %d attempts", host, attempts)
    return False


def delivery_budget_s(attempts: int, timeout_s: float, base_delay_s: float = 0.5) -> float:
    """Worst-case time of one :func:`deliver` call: every attempt times out, every backoff runs."""
    backoff = base_delay_s * (2 ** max(attempts - 1, 0) - 1)
    return attempts * timeout_s + backoff


class WebhookSender:
    """Webhook deliveries in flight for one worker; :meth:`drain` before the worker exits."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._threads: dict[threading.Thread, str] = {}

    def send(self, url: str, payload: dict[str, Any]) -> threading.Thread:
        """Start delivering ``payload`` now, in a thread, without waiting for the receiver."""
        thread = threading.Thread(  # its log lines name the job's task, as the job's do
            target=in_context(deliver), name="voxgate-webhook", daemon=True,
            args=(url, payload, signing_secret(self.settings)),
            kwargs={"attempts": self.settings.webhook_max_attempts,
                    "timeout_s": self.settings.webhook_timeout_s,
                    "allowed_hosts": self.settings.webhook_allowed_hosts})
        with self._lock:
            self._threads = {t: task for t, task in self._threads.items() if t.is_alive()}
            self._threads[thread] = str(payload.get("task_id", ""))
        thread.start()
        return thread

    def pending(self) -> list[str]:
        """Task ids whose delivery is still running."""
        with self._lock:
            return [task for thread, task in self._threads.items() if thread.is_alive()]

    def drain(self, timeout_s: float | None = None) -> bool:
        """Wait for deliveries in flight (default: a whole retry schedule); True when all ended.

        The threads are daemons so a receiver that keeps a connection open past every timeout
        cannot hang the process forever; this wait is what keeps normal deliveries whole.
        """
        if timeout_s is None:
            timeout_s = delivery_budget_s(self.settings.webhook_max_attempts,
                                          self.settings.webhook_timeout_s) + 1.0
        deadline = time.monotonic() + timeout_s
        with self._lock:
            threads = list(self._threads)
        if any(t.is_alive() for t in threads):
            logger.info("waiting for %d webhook delivery(ies) before exiting",
                        sum(t.is_alive() for t in threads))
        for thread in threads:
            thread.join(timeout=max(deadline - time.monotonic(), 0.0))
        left = self.pending()
        if left:
            logger.warning("webhook delivery for task(s) %s still running after %.0f s; "
                           "exiting without it", ", ".join(left), timeout_s)
        return not left
