"""What the test server stores and answers: Keito-shaped records, lists, users and errors."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from ._contract import EXPENSE_SOURCES, TIME_SOURCES, is_date

COLLECTIONS = {"/api/v2/time_entries": "time_entries", "/api/v2/expenses": "expenses"}


def error(label: str, description: str) -> dict[str, str]:
    """Keito's (Harvest-style) error body."""
    return {"error": label, "error_description": description}


def now_iso() -> str:
    """The current UTC time as Keito writes it."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def me(account_id: str, read_only: bool) -> dict[str, Any]:
    """The `GET /api/v2/users/me` answer (a read-only key has no `company`)."""
    user: dict[str, Any] = {
        "id": "usr_test",
        "first_name": "Test",
        "last_name": "Agent",
        "email": "agent@example.test",
        "timezone": "UTC",
        "is_active": True,
        "user_type": "agent",
        "roles": ["member"],
        "weekly_capacity": 144000,
        "currency": "USD",
    }
    if not read_only:
        user["company"] = {"id": account_id, "name": "Test Company"}
    return user


def new_item(collection: str, body: dict[str, Any]) -> dict[str, Any]:
    """A created time entry or expense, with the fields Keito adds."""
    now = now_iso()
    item: dict[str, Any] = {
        "id": ("te_" if collection == "time_entries" else "ex_") + uuid.uuid4().hex[:20],
        "user_id": "usr_test",
        "user": {"id": "usr_test", "name": "Test Agent"},
        "project": {"id": body["project_id"], "name": None},
        "is_locked": False,
        "is_billed": False,
        "source": "api",
        "metadata": None,
        "notes": None,
        "created_at": now,
        "updated_at": now,
        **body,
    }
    if collection == "time_entries":
        item.setdefault("hours", 0)
        item.setdefault("is_running", False)
        item["task"] = {"id": body["task_id"], "name": None}
    else:
        item["expense_category"] = {"id": body["expense_category_id"], "name": "LLM Usage"}
        item.setdefault("units", None)
        item.setdefault("approval_status", "unsubmitted")
    return item


def list_page(
    items: list[dict[str, Any]], collection: str, path: str, query: dict[str, list[str]]
) -> tuple[int, Any]:
    """One page of a list answer, with the filters and the pagination envelope Keito uses."""

    def one(name: str) -> str | None:
        values = query.get(name)
        return values[-1] if values else None

    try:
        page = int(one("page") or 1)
        per_page = int(one("per_page") or 100)
    except ValueError:
        return 400, error("bad request", "page and per_page must be integers")
    if page < 1 or not 1 <= per_page <= 2000:
        return 400, error("bad request", "page must be >= 1 and per_page between 1 and 2000")
    start, end = one("from"), one("to")
    for name, value in (("from", start), ("to", end)):
        if value is not None and not is_date(value):
            return 400, error("bad request", f"{name} must be a date (YYYY-MM-DD)")
    sources = [s for s in (one("source") or "").split(",") if s]
    allowed = TIME_SOURCES if collection == "time_entries" else EXPENSE_SOURCES
    if any(s not in allowed for s in sources):
        return 400, error("bad request", f"source must be one of {', '.join(allowed)}")
    project = one("project_id")
    selected = [
        i
        for i in items
        if (start is None or i["spent_date"] >= start)
        and (end is None or i["spent_date"] <= end)
        and (not sources or i.get("source") in sources)
        and (project is None or i["project_id"] == project)
    ]
    total_pages = max(1, -(-len(selected) // per_page))

    def link(n: int) -> str:
        return f"{path}?page={n}&per_page={per_page}"

    return 200, {
        collection: selected[(page - 1) * per_page : page * per_page],
        "per_page": per_page,
        "total_pages": total_pages,
        "total_entries": len(selected),
        "page": page,
        "links": {
            "first": link(1),
            "next": link(page + 1) if page < total_pages else None,
            "previous": link(page - 1) if page > 1 else None,
            "last": link(total_pages),
        },
    }


def label(status: int) -> str:
    """Keito's short error label for a status."""
    return {
        400: "bad request",
        401: "unauthorized",
        403: "forbidden",
        404: "not found",
        409: "conflict",
        422: "unprocessable entity",
        429: "rate limited",
    }.get(status, "server error" if status >= 500 else "error")


def fmt_seconds(value: float) -> str:
    """A Retry-After value: whole seconds when possible."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"
