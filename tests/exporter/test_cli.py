"""`keito-instrument sync` and `doctor` against the real test server."""

from __future__ import annotations

import json

import pytest

import keito_instrument as keito
from keito_instrument._spool import Spool
from keito_instrument.cli import main
from keito_instrument.cli._sync import bar
from keito_instrument.testing import KeitoTestServer


def local_sessions(n: int) -> None:
    for _ in range(n):
        with keito.session():
            keito.record_llm_call("gpt-4o", "openai", input_tokens=500, output_tokens=50)


def connect(server: KeitoTestServer, **extra: object) -> None:
    settings: dict[str, object] = {
        "api_key": server.api_key,
        "account_id": server.account_id,
        "base_url": server.url,
        "project_id": server.project_id,
        "task_id": server.task_id,
        "expense_category_id": server.expense_category_id,
    }
    keito.configure(**{**settings, **extra})


def test_sync_sends_the_local_ledger_with_a_progress_bar(
    ledger: Spool, capsys: pytest.CaptureFixture[str]
) -> None:
    local_sessions(4)
    assert ledger.counts()["local"] == 8
    with KeitoTestServer() as server:
        connect(server)
        assert main(["sync"]) == 0
        assert len(server.time_entries) == 4 and len(server.expenses) == 4
    err = capsys.readouterr().err
    assert "8 local record(s) released" in err
    assert "[##############################] 8/8 records" in err
    assert "everything is delivered" in err
    assert ledger.counts()["delivered"] == 8


def test_sync_without_credentials_says_what_is_missing(
    ledger: Spool, capsys: pytest.CaptureFixture[str]
) -> None:
    local_sessions(1)
    assert main(["sync"]) == 2
    assert "set KEITO_API_KEY and KEITO_ACCOUNT_ID" in capsys.readouterr().err
    assert ledger.counts()["local"] == 2


def test_sync_reports_what_is_left_when_keito_is_down(
    ledger: Spool, capsys: pytest.CaptureFixture[str]
) -> None:
    local_sessions(2)
    with KeitoTestServer() as server:
        connect(server)
        server.stop()
        assert main(["sync", "--timeout", "0.5", "--no-progress"]) == 1
    assert "4 record(s) still pending" in capsys.readouterr().err
    assert ledger.counts()["pending"] == 4


def test_sync_retries_dead_letters_on_request(ledger: Spool, capsys: pytest.CaptureFixture[str]) -> None:
    local_sessions(1)
    with KeitoTestServer() as server:
        connect(server)
        server.fail_next(422, count=2, methods=("POST",))
        assert main(["sync", "--no-progress"]) == 1
        assert "2 dead letter(s)" in capsys.readouterr().err
        assert main(["sync", "--retry-dead", "--no-progress"]) == 0
        assert len(server.time_entries) == 1 and len(server.expenses) == 1


def test_status_shows_dead_letters_with_keitos_reason(
    keito_server: KeitoTestServer, ledger: Spool, capsys: pytest.CaptureFixture[str]
) -> None:
    keito_server.fail_next(422, count=1, methods=("POST",))
    local_sessions(1)
    assert keito.flush(10.0)
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    dead = ledger.records(state="dead")
    assert len(dead) == 1
    line = next(line for line in out.splitlines() if line.startswith("dead ") and dead[0]["record_id"][:8] in line)
    assert line.endswith("422 unprocessable entity: injected fault")  # Keito's error_description, whole
    assert main(["status", "--format", "json"]) == 0
    errors = json.loads(capsys.readouterr().out)["errors"]
    assert [(e["state"], e["last_error"]) for e in errors] == [("dead", "422 unprocessable entity: injected fault")]


def test_sync_stops_at_once_on_a_bad_key(ledger: Spool, capsys: pytest.CaptureFixture[str]) -> None:
    local_sessions(1)
    with KeitoTestServer() as server:
        connect(server, api_key="kto_revoked")
        assert main(["sync", "--no-progress", "--timeout", "20"]) == 1
        assert len(server.requests) == 1
    assert "run `keito-instrument doctor`" in capsys.readouterr().err


def test_progress_bar() -> None:
    assert bar(0, 10) == "[------------------------------]  0/10 records"
    assert bar(5, 10) == "[###############---------------]  5/10 records"


def test_doctor_all_good(keito_server: KeitoTestServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "agent@example.test at Test Company" in out and "all good" in out
    assert keito_server.api_key not in out
    assert keito_server.requests[0].path == "/api/v2/users/me"


def test_doctor_names_what_is_missing(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  api_key" in out and "KEITO_API_KEY" in out
    assert "warn  task_id" in out and "KEITO_TASK_ID" in out


def test_doctor_flags_a_read_only_key(capsys: pytest.CaptureFixture[str]) -> None:
    with KeitoTestServer(read_only_key=True) as server:
        connect(server)
        assert main(["doctor"]) == 1
    assert "this key is read-only (no company)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"api_key": "kto_bad"}, "Keito refused the API key (401 unauthorized: Invalid API key)"),
        ({"account_id": "cm_other"}, "403 forbidden"),
    ],
)
def test_doctor_explains_refused_credentials(
    change: dict[str, str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with KeitoTestServer() as server:
        connect(server, **change)
        assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert expected in out and "kto_bad" not in out


def test_doctor_reports_an_unreachable_keito(capsys: pytest.CaptureFixture[str]) -> None:
    with KeitoTestServer() as server:
        connect(server)
    assert main(["doctor", "--timeout", "2"]) == 1
    assert "cannot reach http://127.0.0.1:" in capsys.readouterr().out


def test_doctor_reads_a_huge_answer_only_up_to_its_cap(capsys: pytest.CaptureFixture[str]) -> None:
    import tracemalloc

    from keito_instrument.testing import Fault

    with KeitoTestServer() as server:
        connect(server)
        server.misbehave_next(Fault("huge_body", status=200, size=200 << 20, methods=("GET",)))
        tracemalloc.start()
        try:
            assert main(["doctor", "--timeout", "20"]) == 1
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert "larger than 1 MiB" in capsys.readouterr().out
    assert peak < 32 << 20  # a 200 MiB answer never held in memory
