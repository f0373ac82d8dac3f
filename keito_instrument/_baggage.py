"""The session id in W3C baggage (https://www.w3.org/TR/baggage/): across processes, a session
travels in the `baggage` request header as `keito.session_id=<id>`, the key the OpenTelemetry
span processor also reads."""

from __future__ import annotations

from collections.abc import Mapping

SESSION_KEY = "keito.session_id"
HEADER = "baggage"
MAX_HEADER = 8192  # W3C: a baggage header of at most 8192 bytes


def _header_key(headers: Mapping[str, str]) -> str | None:
    for key in headers:
        if isinstance(key, str) and key.lower() == HEADER:
            return key
    return None


def session_id_from(headers: Mapping[str, str] | None) -> str | None:
    """The `keito.session_id` baggage entry of request headers (any header-name case), if any."""
    if not headers:
        return None
    key = _header_key(headers)
    value = headers.get(key) if key is not None else None
    if not isinstance(value, str | bytes):
        return None
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    for member in text[:MAX_HEADER].split(","):
        name, sep, rest = member.partition("=")
        if sep and name.strip() == SESSION_KEY:
            from urllib.parse import unquote  # (here: urllib.parse costs 3 ms at import)

            found = unquote(rest.split(";", 1)[0].strip())
            return found or None
    return None


def with_session(headers: Mapping[str, str] | None, session_id: str) -> dict[str, str]:
    """A copy of `headers` whose baggage carries `session_id` (other baggage entries kept)."""
    out = dict(headers or {})
    key = _header_key(out) or HEADER
    members = [m for m in str(out.get(key) or "").split(",")
               if m.strip() and m.partition("=")[0].strip() != SESSION_KEY]
    from urllib.parse import quote

    members.append(f"{SESSION_KEY}={quote(session_id, safe='')}")
    out[key] = ",".join(m.strip() for m in members)
    return out
