"""Flat record metadata that always fits Keito's 4 KB limit, and the token notes format."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from typing import Any

_log = logging.getLogger("keito_instrument")

METADATA_LIMIT = 4096  # bytes of compact JSON, as the Keito API and CLI count them
# Encoders built once: json.dumps with any option builds a new JSONEncoder at every call.
_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str).encode


def _not_json(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is not JSON")


_STRICT = json.JSONEncoder(separators=(",", ":"), allow_nan=False, default=_not_json).encode
_PLAIN_TYPES = frozenset({str, int, float, bool})


def dumps(value: Any) -> str:
    """Compact JSON, the form whose size Keito limits."""
    return _COMPACT(value)


def size(metadata: Mapping[str, Any]) -> int:
    """Serialized size in bytes."""
    return len(dumps(metadata).encode("utf-8"))


def flat_value(value: Any) -> Any:
    """Scalars stay as they are; anything else becomes compact JSON text (metadata stays flat)."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return dumps(value)


# Keys sent as JSON objects, as the official SDKs send them (everything else stays flat).
STRUCTURED = frozenset({"outcome_evidence"})


def fit(
    required: Mapping[str, Any], *tiers: Mapping[str, Any], limit: int = METADATA_LIMIT
) -> dict[str, Any]:
    """Merge metadata tiers under `limit` bytes, dropping optional keys first.

    `required` keys (the ids) are never dropped. Later tiers are dropped before earlier ones, and
    within a tier the last key goes first. When anything is dropped, `metadata_truncated` says so.
    """
    return fit_json(required, *tiers, limit=limit)[0]


def fit_json(
    required: Mapping[str, Any], *tiers: Mapping[str, Any], limit: int = METADATA_LIMIT
) -> tuple[dict[str, Any], str]:
    """`fit()`, and the compact JSON (`dumps`) of what it returns: the text it measured."""
    merged: dict[str, Any] = dict(required)
    for tier in tiers:
        for key, value in tier.items():
            # The first tier to set a key wins: user metadata cannot overwrite a billing key.
            if value is None or key in merged:
                continue
            if type(value) in _PLAIN_TYPES:
                merged[key] = value
            else:
                merged[key] = value if key in STRUCTURED and isinstance(value, dict) else flat_value(value)
    text = dumps(merged)
    if (len(text) if text.isascii() else len(text.encode("utf-8"))) <= limit:
        return merged, text
    owner: dict[str, int] = {}
    for index, tier in enumerate(tiers):
        for key in tier:
            owner.setdefault(key, index)
    droppable = [key for index, tier in enumerate(tiers) for key in tier
                 if key not in required and key in merged and owner[key] == index]
    merged["metadata_truncated"] = True
    while droppable and size(merged) > limit:
        merged.pop(droppable.pop(), None)
    if size(merged) > limit:  # only the ids are left: cut long string ids rather than fail
        for key, value in merged.items():
            if isinstance(value, str) and len(value) > 200:
                merged[key] = value[:200]
    return merged, dumps(merged)


MAX_DEPTH = 8  # levels of nesting kept in user metadata (deeper is cut: JSON encoders recurse)
MAX_ITEMS = 64  # items kept per list or mapping of user metadata (Keito keeps 4 KB of it anyway)


def text(value: object) -> str | None:
    """`value` as a string, or None when it has none (its `__str__` raises or returns a non-string)."""
    if type(value) is str:
        return value
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    try:
        found = str(value)
    except Exception:
        return None
    return found if isinstance(found, str) else None


def describe(value: object, limit: int = 40) -> str:
    """A short repr of `value` for a warning; never raises (a broken `__repr__` gives its type)."""
    try:
        found = repr(value)
    except Exception:
        found = None
    if not isinstance(found, str):
        found = f"<{type(value).__name__}>"
    return found[:limit]


def plain(value: Any, depth: int = 0) -> Any:
    """A copy of user-supplied metadata that any JSON encoder accepts: mappings with string keys,
    lists, and str/int/float/bool/None leaves. Other objects become their text (or their type's
    name when they have none), bytes are decoded, nesting is cut at MAX_DEPTH (so a circular or
    very deep structure cannot exhaust the stack) and containers at MAX_ITEMS. Non-finite floats
    and lone surrogates are left to `encodable`, which warns about them by field."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, bool | int | float | str):  # subclasses (IntEnum, numpy floats...) as the base type
        for base in (bool, int, float, str):
            if isinstance(value, base):
                try:
                    return base(value)
                except Exception:
                    return f"<{type(value).__name__}>"
    if depth >= MAX_DEPTH:
        return "…"
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        try:
            items = list(value.items())[:MAX_ITEMS]
        except Exception:
            return f"<{type(value).__name__}>"
        for key, item in items:
            name = key if type(key) is str else text(key)
            if name is not None:
                out[name] = plain(item, depth + 1)
        return out
    if isinstance(value, list | tuple | set | frozenset):
        try:
            return [plain(item, depth + 1) for item in list(value)[:MAX_ITEMS]]
        except Exception:  # a set of things that cannot be ordered or compared
            return f"<{type(value).__name__}>"
    found = text(value)
    return found if found is not None else f"<{type(value).__name__}>"


def fmt_tokens(count: int) -> str:
    """12500 -> '12.5k', 30000 -> '30k', 850 -> '850', 2_400_000 -> '2.4M'."""
    if count >= 1_000_000:
        text, unit = f"{count / 1_000_000:.1f}", "M"
    elif count >= 1_000:
        text, unit = f"{count / 1_000:.1f}", "k"
    else:
        return str(count)
    return (text[:-2] if text.endswith(".0") else text) + unit


def truncate(text: str, limit: int = 1500) -> str:
    """Notes are kept short, as Keito's own hooks do."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def encodable(value: Any, where: str = "payload") -> Any:
    """`value` made safe for strict JSON: a NaN or infinite number becomes null and a string that
    is not valid Unicode (a lone surrogate) has the bad characters replaced, each with a warning
    naming the field. So no record can wedge the batch it is sent in; the rest of it is kept."""
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        _log.warning("keito-instrument: %s is %r, not a number Keito accepts; sent as null", where, value)
        return None
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            _log.warning("keito-instrument: %s is not valid Unicode; the bad characters are replaced", where)
            return value.encode("utf-8", "replace").decode("utf-8")
        return value
    if isinstance(value, Mapping):
        return {str(k): encodable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encodable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def strict_json(value: Any, where: str = "payload") -> str:
    """`value` as compact strict JSON (ASCII), made `encodable` first where it has to be.

    The common payload (str keys; strings, numbers, lists and dicts; every number finite; no
    surrogate) is encoded as it is; anything else (a NaN, a lone surrogate, an object JSON does not
    know) is encoded as `json.dumps(encodable(value))`, with its warnings, as before."""
    try:
        text = _STRICT(value)
    except (ValueError, TypeError):
        text = None
    # (ASCII JSON writes every character past U+FFFF, and any surrogate, as \udXXX escapes: such a
    # payload takes the careful way, which changes only lone surrogates.)
    if text is None or "\\ud" in text:
        text = json.dumps(encodable(value, where), separators=(",", ":"), allow_nan=False, default=str)
    return text


def payload_json(payload: dict[str, Any], where: str = "payload", metadata_json: str | None = None) -> str:
    """`strict_json(payload, where)`, without encoding the metadata a second time.

    `metadata_json`: `payload["metadata"]` as `fit_json` encoded it (its last key). Where that text
    is what strict JSON writes too (ASCII only, so nothing is escaped differently; no NaN or
    Infinity), it is joined to the rest of the payload as it is."""
    if (metadata_json is not None and metadata_json.isascii() and "\x7f" not in metadata_json
            and "NaN" not in metadata_json and "Infinity" not in metadata_json
            and payload and next(reversed(payload)) == "metadata"):
        head = {key: value for key, value in payload.items() if key != "metadata"}
        try:
            text = _STRICT(head)
        except (ValueError, TypeError):
            text = None
        if text is not None and "\\ud" not in text:
            return f"{text[:-1]}{',' if head else ''}\"metadata\":{metadata_json}}}"
    return strict_json(payload, where)
