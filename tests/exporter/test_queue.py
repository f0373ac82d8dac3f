"""Claims in the spool: takeover of dead or expired claims (as ambiguous), respect of live ones."""

from __future__ import annotations

import subprocess
import sys
import time

import keito_instrument as keito
from keito_instrument._export.client import Outcome
from keito_instrument._export.queue import Queue, fill_missing, new_owner, requeue_dead
from keito_instrument._spool import Spool


def make_records(ledger: Spool, sessions: int) -> None:
    keito.configure(project_id="prj", task_id="tsk", expense_category_id="cat")
    for _ in range(sessions):
        with keito.session():
            keito.record_llm_call("gpt-4o", "openai", input_tokens=10, output_tokens=5)
    ledger.release_local()


def set_claims(ledger: Spool, owner: str, until: float) -> None:
    with ledger.transaction() as conn:
        conn.execute("UPDATE records SET state='sending', claim_owner=?, claim_until=?", (owner, until))


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def claim(ledger: Spool) -> list[str]:
    claimed, _ = Queue(ledger, new_owner()).claim(keito.get_settings(), 100, 60.0, 60.0)
    assert all(c.ambiguous for c in claimed)  # whoever held them may have sent them
    return [c.record_id for c in claimed]


def test_claims_of_a_dead_process_are_taken_over_at_once_as_ambiguous(ledger: Spool) -> None:
    make_records(ledger, 2)
    host = new_owner().rsplit(":", 2)[0]
    set_claims(ledger, f"{host}:{dead_pid()}:abc", time.time() + 3600)
    assert len(claim(ledger)) == 4
    assert {r["ambiguous"] for r in ledger.records()} == {1}


def test_live_claims_are_respected_until_they_expire(ledger: Spool) -> None:
    make_records(ledger, 2)
    set_claims(ledger, "another-host:1:abc", time.time() + 3600)  # liveness unknown: trust the lease
    queue = Queue(ledger, new_owner())
    assert queue.claim(keito.get_settings(), 100, 60.0, 60.0)[0] == []
    set_claims(ledger, "another-host:1:abc", time.time() - 1)
    assert len(claim(ledger)) == 4


def test_only_the_owner_can_store_a_result(ledger: Spool) -> None:
    make_records(ledger, 1)
    mine = Queue(ledger, new_owner())
    claimed, _ = mine.claim(keito.get_settings(), 100, 60.0, 60.0)
    thief = Queue(ledger, new_owner())
    thief.finish([(c, Outcome("delivered", remote_id="x"), 0.0) for c in claimed])
    assert {r["state"] for r in ledger.records()} == {"sending"}
    mine.finish([(c, Outcome("dead", reason="422 no"), 0.0) for c in claimed])
    assert {r["state"] for r in ledger.records()} == {"dead"}
    assert requeue_dead(ledger) == 2
    assert {r["state"] for r in ledger.records()} == {"pending"}


def test_release_on_shutdown_marks_in_flight_records_ambiguous(ledger: Spool) -> None:
    make_records(ledger, 1)
    queue = Queue(ledger, new_owner())
    queue.claim(keito.get_settings(), 100, 60.0, 60.0)
    assert queue.release_mine() == 2
    assert [(r["state"], r["ambiguous"]) for r in ledger.records()] == [("pending", 1)] * 2


def test_missing_ids_are_filled_from_the_settings() -> None:
    settings = keito.configure(project_id="p", task_id=None, expense_category_id="c")
    payload: dict[str, object] = {"project_id": None, "expense_category_id": None}
    assert fill_missing("expense", payload, settings) == (True, None)
    assert payload == {"project_id": "p", "expense_category_id": "c"}
    entry: dict[str, object] = {"project_id": "own", "task_id": None}
    assert fill_missing("time_entry", entry, settings) == (False, "task_id")
    assert entry["project_id"] == "own"
