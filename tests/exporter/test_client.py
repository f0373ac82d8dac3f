"""The HTTP layer with respx: headers, every status class, Retry-After, listing, no key in logs."""

from __future__ import annotations

import logging

import httpx
import pytest
import respx

import keito_instrument as keito
from keito_instrument._export import client as kc
from keito_instrument._export.policy import RetryPolicy, parse_retry_after
from keito_instrument.testing import KeitoTestServer
from tests.exporter._respx import respx_client

BASE = "https://keito.example.test"
KEY = "kto_secret_key_never_logged_123"


@pytest.fixture
def settings() -> keito.Settings:
    return keito.configure(api_key=KEY, account_id="cm_acct", base_url=BASE, max_concurrency=4)


async def _post(settings: keito.Settings, route_response: httpx.Response | Exception) -> kc.Outcome:
    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        route = mock.post("/api/v2/time_entries")
        if isinstance(route_response, Exception):
            route.side_effect = route_response
        else:
            route.return_value = route_response
        async with respx_client(settings) as client:
            return await kc.post(client, "/api/v2/time_entries", {"project_id": "p"})


async def test_headers_are_those_of_the_official_clients(settings: keito.Settings) -> None:
    with respx.mock(base_url=BASE) as mock:
        route = mock.post("/api/v2/expenses").respond(201, json={"id": "ex_1"})
        async with respx_client(settings) as client:
            out = await kc.post(client, "/api/v2/expenses", {"a": 1})
    request = route.calls.last.request
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert request.headers["Keito-Account-Id"] == "cm_acct"
    assert request.headers["User-Agent"].startswith(f"keito-instrument/{keito.__version__} ")
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Accept"] == "application/json"
    assert out == kc.Outcome("delivered", remote_id="ex_1", status=201)


@pytest.mark.parametrize("status", [200, 201, 202])
async def test_any_2xx_is_delivered(settings: keito.Settings, status: int) -> None:
    out = await _post(settings, httpx.Response(status, json={"id": "te_9"}))
    assert (out.kind, out.remote_id) == ("delivered", "te_9")


@pytest.mark.parametrize("status", [400, 404, 409, 422])
async def test_permanent_4xx_is_dead_with_the_servers_description(
    settings: keito.Settings, status: int
) -> None:
    body = {"error": "bad request", "error_description": "task_id is required"}
    out = await _post(settings, httpx.Response(status, json=body))
    assert out.kind == "dead"
    assert out.reason == f"{status} bad request: task_id is required"
    assert not out.ambiguous


@pytest.mark.parametrize("status", [401, 403])
async def test_auth_failures_pause(settings: keito.Settings, status: int) -> None:
    out = await _post(
        settings, httpx.Response(status, json={"error": "unauthorized", "error_description": "x"})
    )
    assert out.kind == "pause"
    assert out.reason.startswith(str(status))


async def test_a_redirect_pauses_instead_of_killing_records(settings: keito.Settings) -> None:
    out = await _post(settings, httpx.Response(301, headers={"Location": "https://app.keito.ai/x"}))
    assert out.kind == "pause"
    assert out.reason == "301 redirected to https://app.keito.ai/x: check base_url"


async def test_429_is_refused_and_honours_retry_after(settings: keito.Settings) -> None:
    out = await _post(
        settings, httpx.Response(429, headers={"Retry-After": "7"}, json={"error": "rate limited"})
    )
    assert (out.kind, out.ambiguous, out.retry_after) == ("retry", False, 7.0)


@pytest.mark.parametrize("status", [408, 500, 502, 503, 504])
async def test_408_and_5xx_are_ambiguous(settings: keito.Settings, status: int) -> None:
    out = await _post(settings, httpx.Response(status, text="<html>oops</html>"))
    assert (out.kind, out.ambiguous) == ("retry", True)
    assert out.reason.startswith(str(status))


async def test_503_retry_after_is_kept(settings: keito.Settings) -> None:
    out = await _post(settings, httpx.Response(503, headers={"Retry-After": "2"}))
    assert out.retry_after == 2.0 and out.ambiguous


@pytest.mark.parametrize(
    ("exc", "ambiguous"),
    [
        (httpx.ConnectError("refused"), False),
        (httpx.ConnectTimeout("slow connect"), False),
        (httpx.PoolTimeout("pool"), False),
        (httpx.ReadTimeout("no answer"), True),
        (httpx.WriteTimeout("half sent"), True),
        (httpx.RemoteProtocolError("Server disconnected without sending a response."), True),
        (httpx.ReadError("reset"), True),
    ],
)
async def test_network_errors_split_refused_from_ambiguous(
    settings: keito.Settings, exc: Exception, ambiguous: bool
) -> None:
    out = await _post(settings, exc)
    assert (out.kind, out.ambiguous) == ("retry", ambiguous)
    assert out.timed_out == (ambiguous and isinstance(exc, httpx.TimeoutException))


async def test_listing_reads_every_page_with_the_filters(settings: keito.Settings) -> None:
    pages = {
        1: {
            "expenses": [{"id": "ex_1", "metadata": {"record_id": "r1"}}, {"id": "ex_x", "metadata": None}],
            "page": 1,
            "total_pages": 2,
        },
        2: {"expenses": [{"id": "ex_2", "metadata": {"record_id": "r2"}}], "page": 2, "total_pages": 2},
    }
    with respx.mock(base_url=BASE) as mock:
        route = mock.get("/api/v2/expenses")
        route.side_effect = lambda request: httpx.Response(200, json=pages[int(request.url.params["page"])])
        async with respx_client(settings) as client:
            found = await kc.list_record_ids(client, "/api/v2/expenses", "2026-11-22", "prj_1")
    assert found == {"r1": "ex_1", "r2": "ex_2"}
    params = [dict(call.request.url.params) for call in route.calls]
    assert params == [
        {
            "from": "2026-11-22",
            "to": "2026-11-22",
            "source": "agent",
            "per_page": "2000",
            "project_id": "prj_1",
            "page": str(n),
        }
        for n in (1, 2)
    ]


async def test_a_failed_listing_raises_with_its_outcome(settings: keito.Settings) -> None:
    with respx.mock(base_url=BASE) as mock:
        mock.get("/api/v2/time_entries").respond(429, headers={"Retry-After": "3"})
        async with respx_client(settings) as client:
            with pytest.raises(kc.ListError) as info:
                await kc.list_record_ids(client, "/api/v2/time_entries", "2026-11-22", None)
    assert info.value.outcome.retry_after == 3.0


@pytest.mark.parametrize(
    "body",
    [{"data": []}, [], {"time_entries": None, "total_pages": 1}, {"time_entries": [], "total_pages": "2"}],
)
async def test_a_200_that_is_not_keitos_page_is_no_proof_of_absence(settings: keito.Settings, body: object) -> None:
    with respx.mock(base_url=BASE) as mock:
        mock.get("/api/v2/time_entries").respond(200, json=body)
        async with respx_client(settings) as client:
            with pytest.raises(kc.ListError):
                await kc.list_record_ids(client, "/api/v2/time_entries", "2026-11-22", None)


async def test_a_listing_longer_than_the_page_cap_is_incomplete(
    settings: keito.Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kc, "MAX_LIST_PAGES", 3)
    with respx.mock(base_url=BASE) as mock:
        route = mock.get("/api/v2/time_entries").respond(200, json={"time_entries": [], "total_pages": 9})
        async with respx_client(settings) as client:
            with pytest.raises(kc.ListError, match="more than 3 pages"):
                await kc.list_record_ids(client, "/api/v2/time_entries", "2026-11-22", None)
    assert route.call_count == 3


def test_retry_after_parsing() -> None:
    assert parse_retry_after("5") == 5.0
    assert parse_retry_after("0.5") == 0.5
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("99999999") == 3600.0
    assert parse_retry_after("Sun, 22 Nov 2026 10:00:10 GMT", now=1795341600.0) == pytest.approx(10.0)
    assert parse_retry_after("Sun, 22 Nov 2026 09:00:00 GMT", now=1795341600.0) == 0.0


def test_backoff_is_exponential_capped_and_jittered() -> None:
    policy = RetryPolicy(base=1.0, cap=8.0, jitter=0.5)
    for attempt, top in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (10, 8.0)]:
        delays = [policy.backoff(attempt) for _ in range(200)]
        assert all(top / 2 <= d <= top for d in delays)
        assert max(delays) - min(delays) > top / 10  # jitter spreads the retries


async def test_no_outcome_of_the_http_layer_logs_the_key(
    settings: keito.Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, httpx's and httpcore's included
    answers = [httpx.Response(s, json={"error": "x", "error_description": "y"}) for s in (201, 400, 401, 429, 503)]
    with respx.mock(base_url=BASE) as mock:
        failures = [httpx.ConnectError("down"), httpx.ReadTimeout("slow")]
        mock.post("/api/v2/time_entries").side_effect = [*answers, *failures]
        mock.get("/api/v2/time_entries").respond(403, json={"error": "forbidden"})
        async with respx_client(settings) as client:
            kinds = [(await kc.post(client, "/api/v2/time_entries", {"p": 1})).kind for _ in range(7)]
            with pytest.raises(kc.ListError):
                await kc.list_record_ids(client, "/api/v2/time_entries", "2026-11-22", "p")
    assert kinds == ["delivered", "dead", "pause", "retry", "retry", "retry", "retry"]
    assert [r for r in caplog.records if r.name.startswith("httpx")], "httpx's own request log was captured"
    text = "\n".join(f"{r.getMessage()} {r.args}" for r in caplog.records)
    assert KEY not in text and KEY[4:] not in text


def test_the_api_key_is_in_no_log_line(
    caplog: pytest.LogCaptureFixture, keito_server: KeitoTestServer
) -> None:
    caplog.set_level(logging.DEBUG)
    keito_server.fail_next(401, count=1)
    keito_server.fail_next(500, count=2)
    keito.configure(request_timeout=2.0)
    for _ in range(3):
        with keito.session():
            keito.record_llm_call("gpt-4o", "openai", input_tokens=10, output_tokens=5)
    keito.flush(3.0)
    keito.configure(api_key=keito_server.api_key)  # lifts the 401 pause
    assert keito.flush(10.0)
    text = "\n".join(r.getMessage() + str(r.args) for r in caplog.records)
    assert caplog.records, "expected some log output to check"
    assert keito_server.api_key not in text
    assert "Keito refused the requests (401 unauthorized: injected fault)" in text
