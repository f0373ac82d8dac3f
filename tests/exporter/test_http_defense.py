"""A hostile or broken server cannot hurt the host (issue 11): bodies are read with a cap, each
request ends by its deadline, server text is stored redacted and cut, and a record that cannot
be encoded is a dead letter that never wedges its batch."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import sys
import time
import tracemalloc
from collections.abc import AsyncIterator

import httpx
import pytest
import respx

import keito_instrument as keito
from keito_instrument._export import client as kc
from keito_instrument._export.redact import REASON_MAX, clean
from keito_instrument._spool import Spool
from keito_instrument.cli import main
from keito_instrument.testing import Fault, KeitoTestServer
from tests.exporter._respx import respx_client

BASE = "https://keito.example.test"
KEY = "kto_live_9f8e7d6c5b4a39281706"


def run_sessions(n: int) -> None:
    for _ in range(n):
        with keito.session():
            keito.record_llm_call("gpt-4o", "openai", input_tokens=1200, output_tokens=300)


class Chunks(httpx.AsyncByteStream):
    def __init__(self, data: bytes) -> None:
        self.data = data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for i in range(0, len(self.data), 16384):
            yield self.data[i : i + 16384]


@pytest.fixture
def settings() -> keito.Settings:
    return keito.configure(api_key=KEY, account_id="cm_acct", base_url=BASE, request_timeout=1.0)


# -- redaction ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text",
    [
        f"upstream said Authorization: Bearer {KEY}",
        f'{{"headers": {{"authorization": "Bearer {KEY}"}}}}',
        f"bad token bearer {KEY[4:]}",  # not key-shaped without its prefix: caught as a Bearer value
        f"key {KEY} refused",
        "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJlX2hlcmU rejected",
    ],
)
def test_credentials_are_redacted_from_server_text(text: str) -> None:
    out = clean(text)
    assert KEY not in out and KEY[4:] not in out and "eyJzdWIi" not in out
    assert "[redacted]" in out


def test_the_configured_key_is_redacted_whatever_its_shape() -> None:
    odd = "Zq9-not-a-keito-shape-77"
    assert odd not in clean(f"echo: {odd}", [odd])


def test_server_text_is_cut_and_kept_on_one_line() -> None:
    out = clean("line one\r\nforged: log line\x1b[31m" + "x" * 5000)
    assert len(out) <= REASON_MAX and out.endswith("...")
    assert "\n" not in out and "\r" not in out and "\x1b" not in out


async def test_an_echoed_key_is_not_in_the_reason(settings: keito.Settings) -> None:
    body = {"error": "bad request", "error_description": f"proxy saw Authorization: Bearer {KEY} " + "y" * 900}
    with respx.mock(base_url=BASE) as mock:
        mock.post("/api/v2/time_entries").respond(400, json=body)
        async with respx_client(settings) as client:
            out = await kc.post(client, "/api/v2/time_entries", {"a": 1})
    assert out.kind == "dead"
    assert KEY not in out.reason and len(out.reason) <= REASON_MAX
    assert out.reason.startswith("400 bad request: proxy saw Authorization: [redacted]")


# -- body caps ---------------------------------------------------------------------------------
async def test_a_declared_length_over_the_cap_is_not_read(settings: keito.Settings) -> None:
    big = b"x" * (kc.ANSWER_CAP + 1)
    with respx.mock(base_url=BASE) as mock:
        mock.post("/api/v2/time_entries").respond(201, content=big)
        async with respx_client(settings) as client:
            out = await kc.post(client, "/api/v2/time_entries", {"a": 1})
    # A 2xx that cannot be read may still be a stored record: ambiguous, reconciled by listing.
    assert (out.kind, out.ambiguous, out.status) == ("retry", True, 201)
    assert "larger than 1 MiB" in out.reason


async def test_a_gzip_bomb_is_stopped_at_the_cap(settings: keito.Settings) -> None:
    bomb = gzip.compress(b"0" * (64 << 20))  # 64 MiB of zeros in about 64 KB
    assert len(bomb) < kc.ANSWER_CAP
    with respx.mock(base_url=BASE) as mock:
        # A stream (not bytes) so the mock itself does not inflate the body up front.
        mock.post("/api/v2/time_entries").return_value = httpx.Response(
            500, stream=Chunks(bomb), headers={"Content-Encoding": "gzip", "Content-Type": "application/json"}
        )
        async with respx_client(settings) as client:
            tracemalloc.start()
            try:
                out = await kc.post(client, "/api/v2/time_entries", {"a": 1})
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
    assert out.kind == "retry" and "larger than 1 MiB" in out.reason
    assert peak < 16 << 20  # well below the 64 MiB the body expands to


async def test_a_gzipped_answer_is_read(settings: keito.Settings) -> None:
    packed = gzip.compress(json.dumps({"id": "te_7"}).encode())
    with respx.mock(base_url=BASE) as mock:
        mock.post("/api/v2/time_entries").respond(201, content=packed, headers={"Content-Encoding": "gzip"})
        async with respx_client(settings) as client:
            out = await kc.post(client, "/api/v2/time_entries", {"a": 1})
    assert (out.kind, out.remote_id) == ("delivered", "te_7")


async def test_a_legitimately_big_list_page_is_read(settings: keito.Settings) -> None:
    meta = {"record_id": "", "pad": "m" * 3500}  # near Keito's 4 KB metadata limit
    items = [{"id": f"te_{i}", "metadata": {**meta, "record_id": f"r{i}"}} for i in range(kc.LIST_PAGE_SIZE)]
    page = json.dumps({"time_entries": items, "total_pages": 1}).encode()
    assert kc.ANSWER_CAP < len(page) < kc.LIST_ANSWER_CAP
    with respx.mock(base_url=BASE) as mock:
        mock.get("/api/v2/time_entries").respond(200, content=page)
        async with respx_client(settings) as client:
            found = await kc.list_record_ids(client, "/api/v2/time_entries", "2026-12-01", None)
    assert len(found) == kc.LIST_PAGE_SIZE and found["r5"] == "te_5"


async def test_a_list_page_over_its_cap_is_an_incomplete_listing(settings: keito.Settings) -> None:
    with respx.mock(base_url=BASE) as mock:
        mock.get("/api/v2/time_entries").respond(200, content=b" " * (kc.LIST_ANSWER_CAP + 1))
        async with respx_client(settings) as client:
            with pytest.raises(kc.ListError, match="larger than 16 MiB"):
                await kc.list_record_ids(client, "/api/v2/time_entries", "2026-12-01", None)


# -- an unencodable record ---------------------------------------------------------------------
@pytest.mark.parametrize("value", [float("nan"), float("inf"), "lone \ud800 surrogate", {1, 2}])
async def test_a_payload_that_cannot_be_encoded_is_dead_and_not_sent(settings: keito.Settings, value: object) -> None:
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        route = mock.post("/api/v2/time_entries").respond(201, json={"id": "x"})
        async with respx_client(settings) as client:
            out = await kc.post(client, "/api/v2/time_entries", {"notes": value})
    assert out.kind == "dead" and out.status is None
    assert out.reason.startswith("the record cannot be encoded as JSON")
    assert not route.called


def test_a_poisoned_record_is_a_dead_letter_and_the_rest_of_its_batch_is_delivered(ledger: Spool) -> None:
    run_sessions(3)  # no credentials yet: the records stay local
    records = ledger.records()
    assert len(records) == 6 and {r["state"] for r in records} == {"local"}
    poisoned = records[0]["record_id"]
    payload = json.loads(json.dumps(records[0]["payload"]))
    payload["metadata"]["x"] = float("nan")  # an old ledger's payload, written before records were strict
    with ledger.transaction() as conn:
        conn.execute("UPDATE records SET payload=? WHERE record_id=?", (json.dumps(payload), poisoned))
    with KeitoTestServer() as server:
        keito.configure(
            api_key=server.api_key,
            account_id=server.account_id,
            base_url=server.url,
            project_id=server.project_id,
            task_id=server.task_id,
            expense_category_id=server.expense_category_id,
        )
        assert ledger.release_local() == 6
        assert keito.flush(10.0) is True  # nothing left 'sending' or pending
        assert len(server.time_entries) + len(server.expenses) == 5
        assert len([r for r in server.requests if r.method == "POST"]) == 5  # the poisoned one never left
    by_id = {r["record_id"]: r for r in ledger.records()}
    assert by_id[poisoned]["state"] == "dead"
    assert "cannot be encoded as JSON" in by_id[poisoned]["last_error"]
    assert ledger.counts()["delivered"] == 5 and ledger.counts()["sending"] == 0


# -- deadlines against a real server -----------------------------------------------------------
@pytest.mark.parametrize("kind", ["trickle", "stall"])
async def test_a_slow_answer_ends_at_the_deadline(kind: str) -> None:
    with KeitoTestServer() as server:
        server.misbehave_next(Fault(kind, status=201, interval=0.2, seconds=30.0))  # type: ignore[arg-type]
        settings = keito.configure(
            api_key=server.api_key, account_id=server.account_id, base_url=server.url, request_timeout=0.5
        )
        async with kc.make_client(settings) as client:
            begin = time.monotonic()
            out = await kc.post(client, "/api/v2/time_entries", {"a": 1})
            took = time.monotonic() - begin
    assert client.deadline == 1.0
    assert took < client.deadline + 2.0  # generous slack: a 2-core machine shared with other work
    assert out.kind == "retry" and out.ambiguous  # the request had left: reconcile before a retry
    if kind == "trickle":  # each byte comes in time for httpx's read timeout: only the deadline ends it
        assert out.timed_out and "deadline" in out.reason


# -- the fault test of the issue ---------------------------------------------------------------
def _assert_no_key(key: str, ledger: Spool, caplog: pytest.LogCaptureFixture, out: str) -> None:
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert caplog.records, "expected some log output to check"
    stored = json.dumps([dict(r) for r in ledger.records()])
    for text in (logged, stored, out):
        assert key not in text
        assert key.partition("_")[2] not in text  # not even without its prefix


def test_a_hostile_server_cannot_hurt_the_host(
    keito_server: KeitoTestServer, ledger: Spool, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)  # httpx's and httpcore's own lines too
    keito.configure(request_timeout=0.5)  # each request ends within 1 s
    run_sessions(1)  # warm up (pricing data loads once, slowly under tracemalloc) and verify the key
    assert keito.flush(10.0)
    body = 200 << 20
    keito_server.misbehave_next(Fault("huge_body", status=201, size=body, methods=("POST",)))
    keito_server.misbehave_next(Fault("trickle", status=201, interval=0.2, seconds=20.0, methods=("POST",)))
    keito_server.misbehave_next(Fault("stall", seconds=20.0, methods=("POST",)))
    keito_server.misbehave_next(Fault("echo_auth", status=400, methods=("POST",)))
    keito_server.misbehave_next(Fault("echo_auth", status=503, methods=("GET",)))
    tracemalloc.start()
    try:
        run_sessions(4)
        begin = time.monotonic()
        done = keito.flush(60.0)
        assert done, [(r["state"], r["last_error"], r["next_attempt_at"] - time.time()) for r in ledger.records()]
        took = time.monotonic() - begin
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    print(f"hostile server: traced peak {peak / (1 << 20):.1f} MiB, flush {took:.2f} s", file=sys.__stderr__)
    assert peak < 32 << 20, f"peak {peak >> 20} MiB for a {body >> 20} MiB body"
    assert took < 30.0  # the stalls hold their connections for 20 s each: they were given up on
    dead = ledger.records(state="dead")
    assert len(dead) == 1
    assert dead[0]["last_error"].startswith("400 bad request: upstream refused Authorization: [redacted]")
    assert len(keito_server.time_entries) + len(keito_server.expenses) == 9  # 10 records, one dead letter
    assert keito_server.duplicates() == {}
    assert main(["status"]) == 0
    assert main(["status", "--format", "json"]) == 0
    _assert_no_key(keito_server.api_key, ledger, caplog, capsys.readouterr().out)


def test_doctor_does_not_show_an_echoed_key() -> None:
    from keito_instrument.cli._doctor import check_user

    with KeitoTestServer() as server:
        server.misbehave_next(Fault("echo_auth", status=400))
        settings = keito.configure(api_key=server.api_key, account_id=server.account_id, base_url=server.url)
        level, _, detail = check_user(settings, 5.0)
    assert level == "FAIL" and "[redacted]" in detail
    assert server.api_key not in detail


async def test_the_host_loop_is_never_blocked_by_a_stalling_server() -> None:
    with KeitoTestServer() as server:
        server.misbehave_next(Fault("stall", seconds=10.0))
        keito.configure(
            api_key=server.api_key,
            account_id=server.account_id,
            base_url=server.url,
            project_id=server.project_id,
            task_id=server.task_id,
            expense_category_id=server.expense_category_id,
            request_timeout=0.5,
        )
        begin = time.monotonic()
        run_sessions(2)  # the exporter runs on its own thread: the host's loop never waits for it
        await asyncio.sleep(0.05)
        assert time.monotonic() - begin < 2.0
        assert keito.flush(20.0)
