"""Flat record metadata that always fits Keito's 4 KB limit, and the token notes format."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from typing import Any

_log = logging.getLogger("keito_instrument")

METADATA_LIMIT = 4096  # bytes of compact JSON, as the Keito API and CLI count them


def dumps(value: Any) -> str:
    """Compact JSON, the form whose size Keito limits."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


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
    merged: dict[str, Any] = dict(required)
    for tier in tiers:
        for key, value in tier.items():
            # The first tier to set a key wins: user metadata cannot overwrite a billing key.
            if key not in merged and value is not None:
                merged[key] = value if key in STRUCTURED and isinstance(value, dict) else flat_value(value)
    if size(merged) <= limit:
        return merged
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
    return merged


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
