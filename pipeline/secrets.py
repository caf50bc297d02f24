"""API keys: read from the environment only, and scrubbed from every text docroute keeps.

    key = read_key("OPENAI_API_KEY")          # registers the value for scrubbing
    scrub("Incorrect API key provided: sk-abc…")  # -> "Incorrect API key provided: [redacted]"

Every error message that reaches the ledger, a log line or an artifact goes through
``scrub``; ``install_log_scrubber`` adds the same filter to logging as a second line of
defence.
"""

from __future__ import annotations

import logging
import os
import re
import threading

from pydantic import SecretStr

_KNOWN: set[str] = set()
_LOCK = threading.Lock()

# Shapes of keys that may show up in a provider's message even if we never loaded them.
_PATTERNS = re.compile(
    r"(sk-ant-[A-Za-z0-9_\-]{6,}|sk-[A-Za-z0-9_\-]{6,}|gsk_[A-Za-z0-9]{6,}|xai-[A-Za-z0-9]{6,}"
    r"|AIza[0-9A-Za-z_\-]{20,}|(?i:bearer)\s+[A-Za-z0-9._\-]{8,})"
)
REDACTED = "[redacted]"


def read_key(env_var: str | None) -> SecretStr | None:
    """The key in ``env_var`` (None when unset or empty); remembered for scrubbing."""
    if not env_var:
        return None
    value = os.environ.get(env_var, "").strip()
    if not value:
        return None
    register(value)
    return SecretStr(value)


def register(secret: str) -> None:
    if len(secret) >= 6:
        with _LOCK:
            _KNOWN.add(secret)


def scrub(text: str | None) -> str | None:
    """``text`` without any registered secret or key-shaped token."""
    if not text:
        return text
    for secret in sorted(_KNOWN, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, REDACTED)
    return _PATTERNS.sub(REDACTED, text)


class ScrubFilter(logging.Filter):
    """Rewrites a record's message with ``scrub`` before any handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = scrub(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def install_log_scrubber() -> None:
    """Attach ``ScrubFilter`` to every handler of the root and prefect loggers (idempotent)."""
    for name in ("", "prefect"):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, ScrubFilter) for f in handler.filters):
                handler.addFilter(ScrubFilter())
