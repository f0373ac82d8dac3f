"""The test server against Keito's published OpenAPI contract (../shared/contracts/keito-openapi-v2.yaml).

Not a restatement of the server's own rules: the field tables, enums and bounds are read from the
contract, and every create body of a systematic set of mutations must be accepted by the server
exactly when the contract's JSON Schema (plus the documented extra rules) accepts it. Answers are
validated against the contract's response schemas.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import pytest

from keito_instrument.testing import KeitoTestServer, _contract
from tests.contract import _components, _to_json_schema, contract_path, schema_for

pytestmark = pytest.mark.skipif(contract_path() is None, reason="Keito OpenAPI contract not found")

BASES: dict[str, dict[str, Any]] = {
    "time_entry": {
        "project_id": "prj_1",
        "task_id": "tsk_1",
        "spent_date": "2026-11-22",
        "hours": 1.5,
        "source": "agent",
        "metadata": {"record_id": "r"},
    },
    "expense": {
        "project_id": "prj_1",
        "expense_category_id": "cat",
        "spent_date": "2026-11-22",
        "total_cost": 0.5,
        "source": "agent",
        "metadata": {"record_id": "e"},
    },
}
PATHS = {"time_entry": "/api/v2/time_entries", "expense": "/api/v2/expenses"}
# Values every field is tried with: each type JSON has, boundaries, bad dates and times.
PROBES: list[Any] = [
    None, True, 0, 1, -1, 0.5, 1.0, 24, 24.5, 2000, "", "x", "2026-11-22", "2026-02-30", "22/11/2026",
    "09:30", "9:30", "agent", "robot", "desktop", [], ["a"], {}, {"k": "v"}, {"k": "x" * 4090},
]
# Where the server is deliberately stricter than the contract's schema (docs/testing.md says so):
# ids must be non-empty, HH:mm times must be real times. Never looser.


def stricter_by_design(name: str, value: Any) -> bool:
    """Refusals the contract's schema alone would not make (ids empty, times not HH:mm)."""
    kind = {**_contract._TIME_FIELDS, **_contract._EXPENSE_FIELDS}[name]
    return (kind == "string" and value == "") or (kind == "hhmm" and isinstance(value, str))


@pytest.fixture(scope="module")
def server() -> Iterator[KeitoTestServer]:
    with KeitoTestServer() as srv:
        yield srv


@pytest.fixture(scope="module")
def http(server: KeitoTestServer) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {server.api_key}", "Keito-Account-Id": server.account_id}
    with httpx.Client(base_url=server.url, headers=headers, timeout=10.0) as client:
        yield client


def contract_accepts(kind: str, body: dict[str, Any]) -> bool:
    """The contract's schema plus the rules it states in prose (metadata size, total_cost or units)."""
    try:
        jsonschema.validate(body, schema_for(kind), format_checker=jsonschema.FormatChecker())
    except jsonschema.ValidationError:
        return False
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and len(json.dumps(metadata, separators=(",", ":")).encode()) > 4096:
        return False
    return kind != "expense" or body.get("total_cost") is not None or body.get("units") is not None


def test_the_servers_tables_are_the_contracts() -> None:
    schemas = _components()
    for kind, fields, schema in (
        ("time_entry", _contract._TIME_FIELDS, schemas["TimeEntryCreate"]),
        ("expense", _contract._EXPENSE_FIELDS, schemas["ExpenseCreate"]),
    ):
        assert set(fields) == set(schema["properties"]), kind
        sources = _contract.TIME_SOURCES if kind == "time_entry" else _contract.EXPENSE_SOURCES
        assert list(sources) == schema["properties"]["source"]["enum"], kind
    entry, expense = schemas["TimeEntryCreate"]["properties"], schemas["ExpenseCreate"]["properties"]
    assert (entry["hours"]["minimum"], entry["hours"]["maximum"]) == (0, 24)
    assert (expense["units"]["type"], expense["units"]["minimum"]) == ("integer", 1)
    assert expense["total_cost"]["minimum"] == 0
    assert _contract.METADATA_MAX_BYTES == 4096  # "max 4 KB serialized"


@pytest.mark.parametrize("kind", ["time_entry", "expense"])
def test_the_server_accepts_exactly_what_the_contract_accepts(
    server: KeitoTestServer, http: httpx.Client, kind: str
) -> None:
    fields = _components()["TimeEntryCreate" if kind == "time_entry" else "ExpenseCreate"]["properties"]
    cases: list[dict[str, Any]] = [BASES[kind]]
    for name in fields:
        for value in PROBES:
            cases.append({**BASES[kind], name: value})
            if value is None:  # absent, as well as null
                cases.append({k: v for k, v in BASES[kind].items() if k != name})
    mismatches = []
    for body in cases:
        expected = contract_accepts(kind, body)
        answer = http.post(PATHS[kind], json=body)
        accepted = answer.status_code == 201
        changed = {k: v for k, v in body.items() if BASES[kind].get(k, ...) != v}
        allowed = expected and not accepted and any(stricter_by_design(k, v) for k, v in changed.items())
        if accepted != expected and not allowed:
            mismatches.append((changed or "base", expected, answer.status_code, answer.text[:120]))
        if not accepted:
            assert answer.status_code == 400
            assert set(answer.json()) == {"error", "error_description"}  # Keito's error body
    assert len(cases) > 200 and mismatches == []


def validate_answer(schema_name: str, instance: Any) -> None:
    jsonschema.validate(
        instance, _to_json_schema(_components()[schema_name]), format_checker=jsonschema.FormatChecker()
    )


@pytest.mark.parametrize("kind", ["time_entry", "expense"])
def test_created_and_listed_records_have_the_contracts_shape(http: httpx.Client, kind: str) -> None:
    created = http.post(PATHS[kind], json=BASES[kind])
    assert created.status_code == 201
    validate_answer("TimeEntry" if kind == "time_entry" else "Expense", created.json())
    listed = http.get(PATHS[kind], params={"from": "2026-11-22", "to": "2026-11-22", "per_page": 1})
    page = listed.json()
    validate_answer("PaginationEnvelope", page)
    envelope = _components()["PaginationEnvelope"]["properties"]
    assert set(envelope) <= set(page)
    items = page["time_entries" if kind == "time_entry" else "expenses"]
    assert len(items) == 1
    validate_answer("TimeEntry" if kind == "time_entry" else "Expense", items[0])


def test_users_me_has_the_contracts_shape(http: httpx.Client) -> None:
    validate_answer("User", http.get("/api/v2/users/me").json())
