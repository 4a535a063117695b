"""Job webhooks: POST the final status JSON, signed, retried with backoff, never fatal.

The body is signed with HMAC-SHA256 under ``webhook_secret`` (or, when that is empty, the first
API key) and sent as ``X-Voxgate-Signature: sha256=<hex>``; ``X-Voxgate-Timestamp`` and the task
id travel too. Receivers recompute the HMAC over the raw body and compare in constant time.
Delivery runs in a thread of a :class:`WebhookSender`, so a slow receiver never holds up the next
job; a worker calls :meth:`WebhookSender.drain` before it exits (``--burst``, SIGTERM, server
shutdown), which waits for every delivery in flight for up to its whole retry schedule, so exiting
right after a job never cuts a delivery short.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from .config import Settings
from .errors import ConfigError

__all__ = ["validate_webhook_url", "sign", "verify", "signing_secret", "deliver",
           "delivery_budget_s", "WebhookSender", "SIGNATURE_HEADER"]

logger = logging.getLogger(__name__)
SIGNATURE_HEADER = "X-Voxgate-Signature"


def validate_webhook_url(url: str) -> str:
    """The URL if it is http(s) with a host; ``ConfigError`` otherwise (no file:, gopher:...)."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"webhook_url must be an http:// or https:// URL, got {url[:100]!r}")
    if len(url) > 2048:
        raise ConfigError("webhook_url is longer than 2048 characters")
    return url.strip()


def signing_secret(settings: Settings) -> str:
    return settings.webhook_secret or (settings.api_keys[0] if settings.api_keys else "")


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str) -> bool:
    return hmac.compare_digest(sign(secret, body), header or "")


def deliver(url: str, payload: dict[str, Any], secret: str, *, attempts: int = 5,
            timeout_s: float = 10.0, base_delay_s: float = 0.5) -> bool:
    """POST ``payload``; retry connection errors and 5xx/429 with exponential backoff."""
    import httpx

    body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    headers = {"Content-Type": "application/json", "User-Agent": "voxgate-webhook/1",
               "X-Voxgate-Task": str(payload.get("task_id", "")),
               "X-Voxgate-Timestamp": str(int(time.time()))}
    if secret:
        headers[SIGNATURE_HEADER] = sign(secret, body)
    with httpx.Client(timeout=timeout_s, follow_redirects=False) as client:
        for attempt in range(attempts):
            try:
                response = client.post(url, content=body, headers=headers)
                if response.status_code < 400:
                    return True
                reason = f"HTTP {response.status_code}"
                if response.status_code < 500 and response.status_code != 429:
                    logger.warning("webhook %s refused (%s); not retrying", url, reason)
                    return False
            except httpx.HTTPError as exc:
                reason = type(exc).__name__
            if attempt + 1 < attempts:
                delay = base_delay_s * 2 ** attempt
                logger.info("webhook %s failed (%s); retry in %.1fs", url, reason, delay)
                time.sleep(delay)  # backoff between delivery attempts
    logger.warning("webhook %s failed after %d attempts", url, attempts)
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
        thread = threading.Thread(
            target=deliver, name="voxgate-webhook", daemon=True,
            args=(url, payload, signing_secret(self.settings)),
            kwargs={"attempts": self.settings.webhook_max_attempts,
                    "timeout_s": self.settings.webhook_timeout_s})
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
