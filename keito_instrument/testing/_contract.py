"""The Keito v2 create-body rules the test server enforces (from the published OpenAPI contract).

Each check returns None when the body is valid, else the `error_description` Keito would send.
Unknown fields are refused, which is stricter than the real API and catches typos early.
"""

from __future__ import annotations

import json
import re
from datetime import date
from typing import Any

TIME_SOURCES = ("web", "cli", "api", "agent", "calendar", "desktop")
EXPENSE_SOURCES = ("web", "cli", "api", "agent")
METADATA_MAX_BYTES = 4096
_HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")

_TIME_FIELDS: dict[str, str] = {
    "project_id": "string",
    "task_id": "string",
    "spent_date": "date",
    "user_id": "string",
    "hours": "number",
    "notes": "text",
    "billable": "boolean",
    "is_running": "boolean",
    "replace_running": "boolean",
    "started_time": "hhmm",
    "ended_time": "hhmm",
    "source": "string",
    "metadata": "metadata",
}
_EXPENSE_FIELDS: dict[str, str] = {
    "project_id": "string",
    "expense_category_id": "string",
    "spent_date": "date",
    "total_cost": "number",
    "units": "integer",
    "notes": "text",
    "billable": "boolean",
    "source": "string",
    "metadata": "metadata",
}


def is_date(value: Any) -> bool:
    """True for a real calendar date written YYYY-MM-DD."""
    if not isinstance(value, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        return False
    try:
        date.fromisoformat(value)
    except ValueError:
        return False
    return True


def _type_error(name: str, kind: str, value: Any) -> str | None:
    if kind == "string":  # ids
        ok = isinstance(value, str) and value != ""
    elif kind == "text":
        ok = isinstance(value, str)
    elif kind == "date":
        ok = is_date(value)
    elif kind == "number":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif kind == "integer":  # JSON Schema's integer: 3 and 3.0 are the same JSON number
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer()
    elif kind == "boolean":
        ok = isinstance(value, bool)
    elif kind == "hhmm":
        ok = isinstance(value, str) and bool(_HHMM.match(value))
    else:  # metadata
        if value is None:
            return None
        if not isinstance(value, dict):
            return "metadata must be a JSON object"
        size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
        if size > METADATA_MAX_BYTES:
            return f"metadata exceeds {METADATA_MAX_BYTES} bytes serialized ({size})"
        return None
    names = {
        "date": "a date (YYYY-MM-DD)",
        "hhmm": "a time (HH:mm)",
        "integer": "an integer",
        "text": "a string",
    }
    expected = names.get(kind, f"a {kind}")
    return None if ok else f"{name} must be {expected}"


def _check(body: Any, fields: dict[str, str], required: tuple[str, ...]) -> str | None:
    if not isinstance(body, dict):
        return "request body must be a JSON object"
    for name in required:
        if body.get(name) is None:
            return f"{name} is required"
    for name, value in body.items():
        kind = fields.get(name)
        if kind is None:
            return f"unknown field {name}"
        if value is None and kind in ("metadata",):
            continue
        error = _type_error(name, kind, value)
        if error:
            return error
    return None


def check_time_entry(body: Any) -> str | None:
    """Validate a `POST /api/v2/time_entries` body."""
    error = _check(body, _TIME_FIELDS, ("project_id", "task_id", "spent_date"))
    if error:
        return error
    hours = body.get("hours")
    if hours is not None and not 0 <= hours <= 24:
        return "hours must be between 0 and 24"
    if body.get("source") is not None and body["source"] not in TIME_SOURCES:
        return f"source must be one of {', '.join(TIME_SOURCES)}"
    return None


def check_expense(body: Any) -> str | None:
    """Validate a `POST /api/v2/expenses` body."""
    error = _check(body, _EXPENSE_FIELDS, ("project_id", "expense_category_id", "spent_date"))
    if error:
        return error
    if body.get("total_cost") is None and body.get("units") is None:
        return "either total_cost or units is required"
    if body.get("total_cost") is not None and body["total_cost"] < 0:
        return "total_cost must be >= 0"
    if body.get("units") is not None and body["units"] < 1:
        return "units must be an integer >= 1"
    if body.get("source") is not None and body["source"] not in EXPENSE_SOURCES:
        return f"source must be one of {', '.join(EXPENSE_SOURCES)}"
    return None
