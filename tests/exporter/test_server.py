"""The testing kit's server over real sockets: auth, contract, listing, faults, stop/start."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from keito_instrument.testing import KeitoTestServer

ENTRY: dict[str, Any] = {
    "project_id": "prj_1",
    "task_id": "tsk_1",
    "spent_date": "2026-11-22",
    "hours": 1.5,
    "notes": "n",
    "billable": True,
    "source": "agent",
    "metadata": {"session_id": "s", "record_id": "r1"},
}
EXPENSE: dict[str, Any] = {
    "project_id": "prj_1",
    "expense_category_id": "cat",
    "spent_date": "2026-11-22",
    "total_cost": 0.12,
    "source": "agent",
    "metadata": {"record_id": "e1"},
}


@pytest.fixture
def server() -> Iterator[KeitoTestServer]:
    with KeitoTestServer() as srv:
        yield srv


@pytest.fixture
def http(server: KeitoTestServer) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {server.api_key}", "Keito-Account-Id": server.account_id}
    with httpx.Client(base_url=server.url, headers=headers, timeout=5.0) as client:
        yield client


def test_auth_headers_are_enforced(server: KeitoTestServer, http: httpx.Client) -> None:
    assert httpx.post(server.url + "/api/v2/time_entries", json=ENTRY).status_code == 401
    bad = httpx.get(server.url + "/api/v2/users/me", headers={"Authorization": f"Bearer {server.api_key}"})
    assert bad.status_code == 400
    assert bad.json() == {"error": "bad request", "error_description": "Missing Keito-Account-Id header"}
    other = http.get("/api/v2/users/me", headers={"Keito-Account-Id": "cm_other"})
    assert other.status_code == 403
    me = http.get("/api/v2/users/me")
    assert me.status_code == 200 and me.json()["company"]["id"] == server.account_id
    assert me.headers["X-Keito-API-Version"] == "2"
    assert httpx.get(server.url + "/api/health").status_code == 200
    assert server.time_entries == []


def test_read_only_key_has_no_company() -> None:
    with KeitoTestServer(read_only_key=True) as srv:
        me = httpx.get(
            srv.url + "/api/v2/users/me",
            headers={"Authorization": f"Bearer {srv.api_key}", "Keito-Account-Id": srv.account_id},
        )
    assert me.status_code == 200 and "company" not in me.json()


def test_valid_records_are_stored_and_returned(server: KeitoTestServer, http: httpx.Client) -> None:
    entry = http.post("/api/v2/time_entries", json=ENTRY)
    units = {k: v for k, v in EXPENSE.items() if k != "total_cost"}
    expense = http.post("/api/v2/expenses", json={**units, "units": 3})
    assert (entry.status_code, expense.status_code) == (201, 201)
    assert entry.json()["id"].startswith("te_") and entry.json()["hours"] == 1.5
    assert expense.json()["units"] == 3
    assert server.record_ids("time_entries") == ["r1"] and server.record_ids("expenses") == ["e1"]
    assert http.get(f"/api/v2/time_entries/{entry.json()['id']}").status_code == 405


@pytest.mark.parametrize(
    ("kind", "change", "message"),
    [
        ("time_entries", {"task_id": None}, "task_id is required"),
        ("time_entries", {"spent_date": "2026-02-30"}, "spent_date must be a date (YYYY-MM-DD)"),
        ("time_entries", {"hours": 24.01}, "hours must be between 0 and 24"),
        ("time_entries", {"hours": -1}, "hours must be between 0 and 24"),
        ("time_entries", {"hours": "1"}, "hours must be a number"),
        ("time_entries", {"billable": "yes"}, "billable must be a boolean"),
        (
            "time_entries",
            {"source": "robot"},
            "source must be one of web, cli, api, agent, calendar, desktop",
        ),
        ("time_entries", {"metadata": ["a"]}, "metadata must be a JSON object"),
        ("time_entries", {"metadata": {"k": "x" * 4090}}, "metadata exceeds 4096 bytes serialized (4098)"),
        ("time_entries", {"is_billable": True}, "unknown field is_billable"),
        ("expenses", {"total_cost": None}, "either total_cost or units is required"),
        ("expenses", {"total_cost": None, "units": 0}, "units must be an integer >= 1"),
        ("expenses", {"total_cost": None, "units": 1.5}, "units must be an integer"),
        ("expenses", {"total_cost": -0.01}, "total_cost must be >= 0"),
        ("expenses", {"source": "desktop"}, "source must be one of web, cli, api, agent"),
        ("expenses", {"expense_category_id": None}, "expense_category_id is required"),
    ],
)
def test_the_contract_is_enforced(
    server: KeitoTestServer, http: httpx.Client, kind: str, change: dict[str, Any], message: str
) -> None:
    base = ENTRY if kind == "time_entries" else EXPENSE
    body = {k: v for k, v in {**base, **change}.items() if v is not None}
    response = http.post(f"/api/v2/{kind}", json=body)
    assert response.status_code == 400
    assert response.json() == {"error": "bad request", "error_description": message}
    assert server.time_entries == [] and server.expenses == []


def test_metadata_of_exactly_4096_bytes_is_accepted(http: httpx.Client) -> None:
    assert http.post("/api/v2/time_entries", json={**ENTRY, "metadata": {"k": "x" * 4088}}).status_code == 201


def test_listing_filters_and_paginates(server: KeitoTestServer, http: httpx.Client) -> None:
    for n in range(5):
        http.post("/api/v2/time_entries", json={**ENTRY, "metadata": {"record_id": f"r{n}"}})
    http.post("/api/v2/time_entries", json={**ENTRY, "spent_date": "2026-11-21"})
    http.post("/api/v2/time_entries", json={**ENTRY, "project_id": "prj_2"})
    http.post("/api/v2/time_entries", json={**ENTRY, "source": "cli"})
    query: dict[str, str | int] = {
        "from": "2026-11-22",
        "to": "2026-11-22",
        "source": "agent",
        "project_id": "prj_1",
        "per_page": 2,
    }
    first = http.get("/api/v2/time_entries", params={**query, "page": 1}).json()
    assert (first["total_entries"], first["total_pages"], first["page"], first["per_page"]) == (5, 3, 1, 2)
    assert first["links"] == {
        "first": "/api/v2/time_entries?page=1&per_page=2",
        "next": "/api/v2/time_entries?page=2&per_page=2",
        "previous": None,
        "last": "/api/v2/time_entries?page=3&per_page=2",
    }
    ids = [
        e["metadata"]["record_id"]
        for p in (1, 2, 3)
        for e in http.get("/api/v2/time_entries", params={**query, "page": p}).json()["time_entries"]
    ]
    assert ids == [f"r{n}" for n in range(5)]
    both = http.get("/api/v2/time_entries", params={"source": "agent,cli"}).json()
    assert both["total_entries"] == 8
    for bad in ({"per_page": 2001}, {"page": 0}, {"from": "22/11/2026"}, {"source": "robot"}):
        assert http.get("/api/v2/time_entries", params=bad).status_code == 400


def test_status_faults_with_retry_after(server: KeitoTestServer, http: httpx.Client) -> None:
    server.fail_next(429, count=2, retry_after=3)
    answers = [http.post("/api/v2/time_entries", json=ENTRY) for _ in range(3)]
    assert [a.status_code for a in answers] == [429, 429, 201]
    assert answers[0].headers["Retry-After"] == "3"
    assert answers[0].json()["error"] == "rate limited"
    assert len(server.time_entries) == 1
    server.fail_next(503, methods=("POST",))
    assert http.get("/api/v2/time_entries").status_code == 200  # a GET does not consume a POST fault
    assert http.post("/api/v2/time_entries", json=ENTRY).status_code == 503


def test_commit_then_drop_and_commit_then_500(server: KeitoTestServer, http: httpx.Client) -> None:
    server.drop_after_commit()
    with pytest.raises(httpx.RemoteProtocolError):
        http.post("/api/v2/time_entries", json=ENTRY)
    server.error_after_commit(status=502)
    assert http.post("/api/v2/expenses", json=EXPENSE).status_code == 502
    assert len(server.time_entries) == 1 and len(server.expenses) == 1
    assert [r.status for r in server.requests] == [None, 502]


def test_latency_is_applied(server: KeitoTestServer, http: httpx.Client) -> None:
    server.set_latency(0.3)
    with pytest.raises(httpx.ReadTimeout):
        http.post("/api/v2/time_entries", json=ENTRY, timeout=0.1)
    server.clear_faults()
    assert http.get("/api/v2/time_entries").status_code == 200


def test_stop_refuses_connections_and_start_reuses_the_port(
    server: KeitoTestServer, http: httpx.Client
) -> None:
    assert http.get("/api/v2/users/me").status_code == 200  # a keep-alive connection is open
    port = server.port
    server.stop()
    with pytest.raises(httpx.TransportError):
        http.get("/api/v2/users/me")
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url + "/api/health")
    server.start()
    assert server.port == port
    assert http.get("/api/v2/users/me").status_code == 200


def test_duplicates_are_reported(server: KeitoTestServer, http: httpx.Client) -> None:
    for _ in range(2):
        http.post("/api/v2/time_entries", json=ENTRY)
    assert server.duplicates() == {"r1": 2}
    server.reset()
    assert server.time_entries == [] and server.requests == []
