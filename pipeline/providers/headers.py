"""Reading the quota and retry headers providers send, into ``RateLimitInfo``.

    openai_limits({"x-ratelimit-remaining-requests": "59", "x-ratelimit-reset-requests": "1s"})
    anthropic_limits({"anthropic-ratelimit-requests-reset": "2025-06-01T12:00:30Z"})
    mistral_limits({"ratelimitbysize-remaining": "9000", "ratelimitbysize-reset": "12"})
    retry_after({"retry-after": "2"})        # 2.0

Each vendor names and formats them differently; adapters pick the reader for their wire.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime

from pipeline.providers.base import RateLimitInfo

_DURATION = re.compile(r"(?P<n>\d+(?:\.\d+)?)(?P<unit>ms|h|m|s)")
_SCALE = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait, from ``retry-after-ms`` or ``retry-after`` (seconds) headers."""
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value:
            try:
                return max(float(value) / scale, 0.0)
            except ValueError:
                continue
    return None


def parse_duration(text: str | None) -> float | None:
    """OpenAI's reset format: ``"1s"``, ``"6m0s"``, ``"20ms"``, ``"1h2m3.5s"`` → seconds."""
    if not text:
        return None
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(n) * _SCALE[u] for n, u in parts)


def _int(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name)
    try:
        return int(float(value)) if value is not None else None
    except ValueError:
        return None


def openai_limits(headers: Mapping[str, str]) -> RateLimitInfo | None:
    """``x-ratelimit-*`` headers (OpenAI and most OpenAI-compatible servers)."""
    info = RateLimitInfo(
        limit_requests=_int(headers, "x-ratelimit-limit-requests"),
        remaining_requests=_int(headers, "x-ratelimit-remaining-requests"),
        reset_requests_s=parse_duration(headers.get("x-ratelimit-reset-requests")),
        limit_tokens=_int(headers, "x-ratelimit-limit-tokens"),
        remaining_tokens=_int(headers, "x-ratelimit-remaining-tokens"),
        reset_tokens_s=parse_duration(headers.get("x-ratelimit-reset-tokens")),
    )
    return None if info == RateLimitInfo() else info


def seconds_until(timestamp: str | None, now: datetime | None = None) -> float | None:
    """Anthropic's reset format, an RFC 3339 time (``2025-06-01T12:00:30Z``) → seconds from now."""
    if not timestamp:
        return None
    try:
        moment = datetime.fromisoformat(timestamp.strip())
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max((moment - (now or datetime.now(UTC))).total_seconds(), 0.0)


def anthropic_limits(
    headers: Mapping[str, str], now: datetime | None = None
) -> RateLimitInfo | None:
    """``anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}`` headers."""
    p = "anthropic-ratelimit-"
    info = RateLimitInfo(
        limit_requests=_int(headers, p + "requests-limit"),
        remaining_requests=_int(headers, p + "requests-remaining"),
        reset_requests_s=seconds_until(headers.get(p + "requests-reset"), now),
        limit_tokens=_int(headers, p + "tokens-limit"),
        remaining_tokens=_int(headers, p + "tokens-remaining"),
        reset_tokens_s=seconds_until(headers.get(p + "tokens-reset"), now),
    )
    return None if info == RateLimitInfo() else info


def mistral_limits(headers: Mapping[str, str]) -> RateLimitInfo | None:
    """Mistral's ``x-ratelimit-*`` headers where sent, else its token quota headers
    (``ratelimitbysize-{limit,remaining,reset}``, the reset in seconds, or the
    ``x-ratelimitbysize-{limit,remaining}-minute`` pair)."""
    info = openai_limits(headers) or RateLimitInfo()
    if info.limit_tokens is None and info.remaining_tokens is None:
        limit = _int(headers, "ratelimitbysize-limit")
        remaining = _int(headers, "ratelimitbysize-remaining")
        if limit is None and remaining is None:
            limit = _int(headers, "x-ratelimitbysize-limit-minute")
            remaining = _int(headers, "x-ratelimitbysize-remaining-minute")
        info = replace(
            info,
            limit_tokens=limit,
            remaining_tokens=remaining,
            reset_tokens_s=parse_duration(headers.get("ratelimitbysize-reset")),
        )
    return None if info == RateLimitInfo() else info
