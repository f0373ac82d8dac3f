"""End to end against the real test server: delivery, reconcile-before-retry, pauses, deadlines."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

import keito_instrument as keito
from keito_instrument import _export
from keito_instrument._export import client, worker
from keito_instrument._spool import Spool
from keito_instrument.testing import KeitoTestServer
from tests.contract import validate


def run_sessions(n: int, model: str = "gpt-4o") -> list[str]:
    ids = []
    for _ in range(n):
        with keito.session() as s:
            keito.record_llm_call(model, "openai", input_tokens=1200, output_tokens=300)
            ids.append(s.session_id)
    return ids


def posts(server: KeitoTestServer) -> list[Any]:
    return [r for r in server.requests if r.method == "POST"]


def test_sessions_are_delivered_once_with_contract_valid_payloads(
    keito_server: KeitoTestServer, ledger: Spool
) -> None:
    run_sessions(3)
    assert keito.flush(10.0)
    assert len(keito_server.time_entries) == 3 and len(keito_server.expenses) == 3
    for request in posts(keito_server):
        validate("expense" if request.path.endswith("expenses") else "time_entry", request.body)
    records = ledger.records()
    assert {r["state"] for r in records} == {"delivered"}
    remote = {e["id"] for e in keito_server.time_entries + keito_server.expenses}
    assert {r["remote_id"] for r in records} == remote
    assert [r.status for r in keito_server.requests] == [201] * 6


def test_the_first_notify_starts_one_exporter_thread(keito_server: KeitoTestServer) -> None:
    def exporters() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "keito-instrument-exporter"]

    keito.shutdown(1.0)
    assert exporters() == []
    run_sessions(2)
    deadline = time.monotonic() + 10.0  # the billing thread bills them, then wakes the exporter
    while not exporters() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(exporters()) == 1 and exporters()[0].daemon
    assert keito.flush(5.0)
    assert keito.shutdown(2.0)
    assert exporters() == []


def test_import_starts_no_thread() -> None:
    code = "import threading, keito_instrument; print(threading.active_count())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"


@pytest.mark.parametrize("fault", ["drop_after_commit", "error_after_commit"])
def test_an_ambiguous_post_is_reconciled_not_resent(
    keito_server: KeitoTestServer, ledger: Spool, fault: str
) -> None:
    getattr(keito_server, fault)(count=2)
    run_sessions(1)
    assert keito.flush(10.0)
    assert keito_server.duplicates() == {}
    assert len(keito_server.time_entries) == 1 and len(keito_server.expenses) == 1
    assert len(posts(keito_server)) == 2  # found by listing: no second POST
    lists = [r for r in keito_server.requests if r.method == "GET"]
    assert {r.path for r in lists} == {"/api/v2/time_entries", "/api/v2/expenses"}
    assert lists[0].query["source"] == ["agent"] and lists[0].query["per_page"] == ["2000"]
    assert all(r["state"] == "delivered" and r["remote_id"] for r in ledger.records())


def test_one_listing_reconciles_every_ambiguous_record_of_a_day(
    keito_server: KeitoTestServer, ledger: Spool
) -> None:
    keito.configure(api_key=None)
    run_sessions(20)  # kept locally, then released at once: one batch
    assert keito.flush(5.0)
    keito.configure(api_key=keito_server.api_key)
    assert ledger.release_local() == 40
    keito_server.error_after_commit(count=40, status=503)
    assert keito.flush(10.0)
    assert len(keito_server.time_entries) == 20 and len(keito_server.expenses) == 20
    assert keito_server.duplicates() == {}
    assert len(posts(keito_server)) == 40
    assert len([r for r in keito_server.requests if r.method == "GET"]) == 2


def test_reconciling_reads_every_page_of_the_day(
    keito_server: KeitoTestServer, ledger: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client, "LIST_PAGE_SIZE", 3)  # 20 records of a day: 7 pages per endpoint
    keito.configure(api_key=None)
    run_sessions(20)
    assert keito.flush(5.0)
    keito.configure(api_key=keito_server.api_key)
    assert ledger.release_local() == 40
    keito_server.error_after_commit(count=40, status=500)
    assert keito.flush(10.0)
    assert len(keito_server.time_entries) == 20 and len(keito_server.expenses) == 20
    assert keito_server.duplicates() == {} and len(posts(keito_server)) == 40
    pages = sorted(
        (r.path, int(r.query["page"][0]), r.query["per_page"][0])
        for r in keito_server.requests
        if r.method == "GET"
    )
    assert pages == [(p, n, "3") for p in ("/api/v2/expenses", "/api/v2/time_entries") for n in range(1, 8)]


def test_an_ambiguous_post_that_did_not_commit_is_sent_again(keito_server: KeitoTestServer) -> None:
    keito_server.fail_next(502, count=2, methods=("POST",))
    run_sessions(1)
    assert keito.flush(10.0)
    assert [r.status for r in posts(keito_server)] == [502, 502, 201, 201]
    assert len(keito_server.time_entries) == 1 and len(keito_server.expenses) == 1


class Gate:
    """A fault hook that holds requests on the server's threads until the test opens a gate:
    POSTs until `posts` is set, listings until `lists` is set. Nothing here depends on timing."""

    def __init__(self) -> None:
        self.posts = threading.Event()
        self.lists = threading.Event()

    def __call__(self, method: str, path: str) -> None:
        (self.posts if method == "POST" else self.lists).wait()

    def open(self) -> None:
        self.posts.set()
        self.lists.set()


def wait_until(condition: Any) -> None:
    """Poll until `condition()` is true; the suite's per-test timeout bounds a hang."""
    while not condition():
        time.sleep(0.01)


def test_a_timed_out_post_committed_late_is_found_by_listing(
    keito_server: KeitoTestServer, ledger: Spool
) -> None:
    gate = keito_server.fault_hook = Gate()
    keito.configure(request_timeout=0.2)
    try:
        run_sessions(1)
        _export.notify()
        # Both POSTs time out on our side while Keito still holds them...
        wait_until(lambda: all("ReadTimeout" in (r["last_error"] or "") for r in ledger.records()))
        assert all(r["ambiguous"] for r in ledger.records())
        gate.posts.set()  # ...then Keito commits them, after our client gave up
        assert keito_server.wait_for(time_entries=1, expenses=1)
        gate.lists.set()
        assert keito.flush(10.0)
    finally:
        gate.open()
    assert len(keito_server.time_entries) == 1 and len(keito_server.expenses) == 1
    assert keito_server.duplicates() == {}
    assert len(posts(keito_server)) == 2  # found by listing, never POSTed again
    assert any(r.method == "GET" and r.status == 200 for r in keito_server.requests)


def test_a_retry_after_beyond_the_deadline_makes_flush_return_early(keito_server: KeitoTestServer) -> None:
    keito_server.fail_next(429, count=1, retry_after=3600, methods=("POST",))
    run_sessions(1)
    # Returning early is what lets this call end: waiting out its 3,000 s budget would trip the
    # suite's per-test timeout, and waiting out the Retry-After would deliver (and return True).
    assert keito.flush(3000.0) is False
    assert len(posts(keito_server)) == 1  # the other record waits too: the gate is exporter-wide


def test_429_retry_after_is_honoured(keito_server: KeitoTestServer) -> None:
    keito_server.fail_next(429, count=1, retry_after=1, methods=("POST",))
    run_sessions(1)
    assert keito.flush(10.0)
    sent = posts(keito_server)
    assert [r.status for r in sent] == [429, 201, 201]  # one request at a time until the first success
    assert sent[1].at - sent[0].at >= 0.95
    assert not [r for r in keito_server.requests if r.method == "GET"]  # a 429 is not ambiguous


@pytest.mark.parametrize("status", [400, 404, 409, 422])
def test_a_permanent_refusal_is_a_dead_letter_with_the_reason(
    keito_server: KeitoTestServer, ledger: Spool, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    keito_server.fail_next(status, count=1, methods=("POST",))
    run_sessions(1)
    assert keito.flush(10.0)  # nothing is left pending: the dead letter is kept, not retried
    dead = ledger.records(state="dead")
    assert len(dead) == 1 and dead[0]["last_error"].startswith(f"{status} ")
    assert "injected fault" in dead[0]["last_error"]
    assert len(posts(keito_server)) == 2
    assert "refused a" in caplog.text


def test_a_403_for_one_record_is_its_dead_letter_not_a_pause(
    keito_server: KeitoTestServer, ledger: Spool, caplog: pytest.LogCaptureFixture
) -> None:
    run_sessions(1)
    assert keito.flush(10.0)  # Keito has accepted this key and account
    keito_server.fail_next(403, count=1, methods=("POST",))  # say, a project the key may not use
    run_sessions(3)
    assert keito.flush(10.0)  # nothing is left pending: delivery did not pause
    dead = ledger.records(state="dead")
    assert len(dead) == 1 and dead[0]["last_error"] == "403 forbidden: injected fault"
    assert len(keito_server.time_entries) + len(keito_server.expenses) == 7
    assert not _export.state().paused and "paused" not in caplog.text


def test_a_403_on_a_key_not_yet_accepted_pauses(keito_server: KeitoTestServer, ledger: Spool) -> None:
    keito.configure(account_id="cm_another_company")  # the server answers 403 to every request
    run_sessions(3)
    assert keito.flush(3000.0) is False  # returns early: nothing can progress while paused
    assert len(keito_server.requests) == 1 and _export.state().paused
    wait_until(lambda: ledger.counts()["sending"] == 0)  # flush() may return before the claims are given back
    assert {r["state"] for r in ledger.records()} == {"pending"}  # kept, not killed
    keito.configure(account_id=keito_server.account_id)
    assert keito.flush(10.0)
    assert len(keito_server.time_entries) == len(keito_server.expenses) == 3


def test_401_pauses_delivery_until_the_settings_change(keito_server: KeitoTestServer, ledger: Spool) -> None:
    keito.configure(api_key="kto_wrong")
    run_sessions(3)
    # Returns early (nothing can progress while paused): a 3,000 s wait would trip the suite's timeout.
    assert keito.flush(3000.0) is False
    assert keito.flush(0.3) is False  # another cycle or two: still no new request
    assert len(keito_server.requests) == 1  # no hammering with a bad key
    wait_until(lambda: ledger.counts()["sending"] == 0)
    assert {r["state"] for r in ledger.records()} == {"pending"}
    assert any((r["last_error"] or "").startswith("401") for r in ledger.records())
    keito.configure(api_key=keito_server.api_key)
    assert keito.flush(10.0)
    assert len(keito_server.time_entries) == 3 and len(keito_server.expenses) == 3


def test_records_without_a_task_id_wait_for_the_setting(
    keito_server: KeitoTestServer, ledger: Spool, caplog: pytest.LogCaptureFixture
) -> None:
    keito.configure(task_id=None)
    run_sessions(2)
    assert keito.flush(3.0) is False
    assert len(keito_server.expenses) == 2 and keito_server.time_entries == []
    waiting = ledger.records(state="pending")
    assert len(waiting) == 2
    assert all(r["last_error"].startswith("missing setting task_id: configure(task_id=...)") for r in waiting)
    assert caplog.text.count("wait for the task_id setting") == 1
    keito.configure(task_id="tsk_late")
    assert keito.flush(10.0)
    assert [e["task_id"] for e in keito_server.time_entries] == ["tsk_late", "tsk_late"]
    assert all(
        r["payload"]["task_id"] == "tsk_late"
        for r in ledger.records(state="delivered")
        if r["kind"] == "time_entry"
    )


def test_flush_returns_by_its_deadline_with_the_server_down(keito_server: KeitoTestServer) -> None:
    keito_server.stop()  # until flush() returns: a flush that ignored its deadline would never end
    run_sessions(5)
    assert keito.flush(0.5) is False
    keito_server.start()
    assert keito.flush(10.0)
    assert len(keito_server.time_entries) == 5 and keito_server.duplicates() == {}


def test_flush_returns_by_its_deadline_while_keito_holds_the_requests(keito_server: KeitoTestServer) -> None:
    gate = keito_server.fault_hook = Gate()  # closed until flush() returns: no answer, ever, before that
    try:
        run_sessions(2)
        assert keito.flush(0.3) is False
        assert not [r for r in keito_server.requests if r.status is not None]  # Keito answered nothing
    finally:
        gate.open()
    assert keito.flush(10.0)
    assert len(keito_server.time_entries) == 2 and keito_server.duplicates() == {}


def test_shutdown_returns_by_its_deadline_and_the_next_run_reconciles(
    keito_server: KeitoTestServer, ledger: Spool
) -> None:
    gate = keito_server.fault_hook = Gate()
    try:
        run_sessions(1)
        _export.notify()
        # A new key's first request goes alone (a bad key costs one 401): the server holds it.
        wait_until(lambda: keito_server.open_connections == 1)
        exporter = [t for t in threading.enumerate() if t.name == "keito-instrument-exporter"]
        assert keito.shutdown(0.3) is False  # returns although Keito has not answered
        assert not keito_server.requests  # the server is still holding the request
        for thread in exporter:
            thread.join()  # the cancelled thread gives its claims back as it ends
        records = ledger.records()
        assert {r["state"] for r in records} == {"pending"} and all(r["ambiguous"] for r in records)
        gate.posts.set()  # Keito now commits the request we gave up on
        wait_until(lambda: len(keito_server.time_entries) + len(keito_server.expenses) == 1)
    finally:
        gate.open()
    assert keito.flush(10.0)
    assert len(keito_server.time_entries) == len(keito_server.expenses) == 1
    assert keito_server.duplicates() == {}
    assert len(posts(keito_server)) == 2  # the committed one was found by listing, not sent again
    assert [r.path for r in keito_server.requests if r.method == "GET"]


def test_the_exporter_suppresses_opentelemetry(
    keito_server: KeitoTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    context = pytest.importorskip("opentelemetry.context")  # the core tests also run without it

    seen: list[object] = []
    real_post = client.post

    async def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(context.get_value(context._SUPPRESS_INSTRUMENTATION_KEY))
        return await real_post(*args, **kwargs)

    monkeypatch.setattr(worker, "post", spy)
    keito.shutdown(1.0)  # a fresh exporter thread: OpenTelemetry is imported now
    run_sessions(1)
    assert keito.flush(5.0)
    assert seen == [True, True]
    assert context.get_value(context._SUPPRESS_INSTRUMENTATION_KEY) is None  # the host is untouched


def test_no_credentials_keeps_records_local_and_starts_nothing(ledger: Spool) -> None:
    run_sessions(2)
    assert keito.flush(1.0)
    assert {r["state"] for r in ledger.records()} == {"local"}
    assert not [t for t in threading.enumerate() if t.name == "keito-instrument-exporter"]


@pytest.mark.parametrize("server_up", [True, False])
def test_the_host_thread_never_touches_the_network(
    keito_server: KeitoTestServer, monkeypatch: pytest.MonkeyPatch, server_up: bool
) -> None:
    callers: list[str] = []
    guarded_connect = socket.socket.connect

    def spy(self: socket.socket, address: Any) -> None:
        callers.append(threading.current_thread().name)
        guarded_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", spy)
    if not server_up:
        keito_server.stop()
    run_sessions(30)
    assert keito.flush(5.0 if server_up else 0.5) is server_up
    assert callers, "the exporter should have tried to connect"
    assert set(callers) == {"keito-instrument-exporter"}
    assert (len(keito_server.time_entries) == 30) is server_up
