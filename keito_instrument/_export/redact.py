"""Redaction of text that comes from a server before it is stored, logged or shown.

A proxy or a broken server may echo the request's `Authorization` header in its error body, its
status line or its headers. Whatever the exporter keeps of an answer (a record's `last_error`,
log lines, `status` and `doctor` output) goes through `clean()`: the configured key's exact
value, `Authorization` values, `Bearer` tokens, Keito-shaped keys (`kto_...`) and JWTs are
replaced by `[redacted]`, control characters by spaces, and the text is cut to `REASON_MAX`
characters.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping

__all__ = ["REASON_MAX", "clean", "install_log_filter", "redact", "secrets_of"]

REASON_MAX = 300
MARK = "[redacted]"
_MIN_SECRET = 6  # shorter exact values would blank out ordinary words
_PATTERNS = [
    # "Authorization: Bearer x", "authorization": "Basic x", authorization=x ...
    (re.compile(r"((?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?)[^\"'\r\n,;}]+", re.IGNORECASE), r"\1" + MARK),
    (re.compile(r"\b(bearer)\s+[A-Za-z0-9._~+/=-]+", re.IGNORECASE), r"\1 " + MARK),
    (re.compile(r"\bkto_[A-Za-z0-9_-]+"), "kto_" + MARK),  # Keito's personal access tokens
    (re.compile(r"\beyJ[A-Za-z0-9_-]{6,}\.[A-Za-z0-9_-]{6,}\.[A-Za-z0-9_-]*"), MARK),  # JWTs
]
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_LOGGERS = ("httpx", "httpcore", "httpcore.connection", "httpcore.http11", "httpcore.http2", "httpcore.proxy")


def secrets_of(headers: Mapping[str, str] | None) -> list[str]:
    """The credentials a request carried: its whole `Authorization` value and the token in it."""
    if headers is None:
        return []
    value = headers.get("Authorization") or ""
    found = [value.strip()]
    scheme, _, token = value.strip().partition(" ")
    if token and scheme:
        found.append(token.strip())
    return [s for s in found if len(s) >= _MIN_SECRET]


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with every credential replaced by `[redacted]` (see the module docstring)."""
    for secret in sorted({s for s in secrets if s and len(s) >= _MIN_SECRET}, key=len, reverse=True):
        text = text.replace(secret, MARK)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def clean(text: str, secrets: Iterable[str] = (), limit: int = REASON_MAX) -> str:
    """Redacted, on one line, and at most `limit` characters (a cut ends with '...')."""
    text = _CONTROL.sub(" ", redact(text, secrets)).strip()
    if len(text) > limit:
        text = text[: limit - 3].rstrip() + "..."
    return text


class _RedactFilter(logging.Filter):
    """Redacts httpx's and httpcore's own log records (their status lines and answer headers)."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: tuple[str, ...] = ()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a record whose arguments do not format: leave it to logging
            return True
        cleaned = redact(message, self.secrets)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


_FILTER = _RedactFilter()


def install_log_filter(secrets: Iterable[str] = ()) -> None:
    """Add the redacting filter to httpx's and httpcore's loggers (once; it changes nothing else),
    also redacting `secrets` (the key in use) from now on.

    Logger filters are not inherited, so each logger those libraries write to gets it.
    """
    _FILTER.secrets = tuple(secrets)
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
