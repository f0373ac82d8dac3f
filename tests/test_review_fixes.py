"""Regression tests for billing edge cases: DST days, joins racing an end, reserved keys, fork."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import keito_instrument as keito
from keito_instrument import _pipeline
from keito_instrument._records import split_by_day
from keito_instrument._spool import Spool


def test_local_time_zone_day_split_where_dst_skips_midnight() -> None:
    code = textwrap.dedent("""
        from datetime import datetime
        from zoneinfo import ZoneInfo
        from keito_instrument._records import split_by_day
        start = datetime(2019, 9, 7, 23, 30, tzinfo=ZoneInfo("America/Santiago")).timestamp()
        days = split_by_day(((start, start + 30 * 3600),), None)
        print(sorted((d.isoformat(), s) for d, s in days.items()))
    """)
    env = {**os.environ, "TZ": "America/Santiago"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    # 2019-09-08 began at 01:00 local and had 23 hours: nothing is cut off.
    assert out.stdout.strip() == ("[('2019-09-07', 1800.0), ('2019-09-08', 82800.0), ('2019-09-09', 23400.0)]")


def test_explicit_zone_split_matches_the_local_one() -> None:
    from datetime import datetime
    from zoneinfo import ZoneInfo

    tz = ZoneInfo("America/Santiago")
    start = datetime(2019, 9, 7, 23, 30, tzinfo=tz).timestamp()
    days = split_by_day(((start, start + 30 * 3600),), tz)
    assert sum(days.values()) == 30 * 3600 and len(days) == 3


def test_a_run_joining_as_the_last_run_ends_is_never_cut_off(ledger: Spool) -> None:
    # Many threads repeatedly start and end runs of one id: every call lands in exactly one session.
    def worker(n: int) -> None:
        for _ in range(50):
            run = keito.begin_run("racy", framework="test")
            assert run is not None
            assert run.session.record_llm_call("gpt-4o", input_tokens=1, output_tokens=1) is True
            keito.end_run(run)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows = ledger.sessions()
    assert sum(r["llm_calls"] for r in rows) == 400
    assert _pipeline.registry.get("racy") is None


def test_user_metadata_cannot_override_billing_keys(ledger: Spool) -> None:
    with keito.session(metadata={"input_tokens": "n/a", "model": "mine", "session_id": "x", "team": "a"}) as s:
        keito.record_llm_call("gpt-4o", input_tokens=100, output_tokens=5)
    expense = next(r for r in ledger.records() if r["kind"] == "expense")["payload"]["metadata"]
    assert (expense["input_tokens"], expense["model"], expense["session_id"], expense["team"]) == (
        100, "gpt-4o", s.session_id, "a")


def test_missing_usage_is_cost_unknown_not_zero(ledger: Spool) -> None:
    with keito.session():
        keito.record_llm_call("gpt-4o", usage_missing=True)
    expense = next(r for r in ledger.records() if r["kind"] == "expense")["payload"]
    assert "total_cost" not in expense and expense["units"] == 1
    assert expense["metadata"]["cost_unknown"] is True and expense["metadata"]["usage_missing"] == 1


def test_a_busy_session_still_reaches_the_ledger_after_max_session_age(ledger: Spool) -> None:
    keito.configure(max_session_age=0.1)
    keito.record_llm_call("gpt-4o", input_tokens=1, output_tokens=1, session_id="busy-user")
    time.sleep(0.15)
    keito.record_llm_call("gpt-4o", input_tokens=1, output_tokens=1, session_id="busy-user")
    assert _pipeline.registry.sweep() == 1
    assert [r["end_reason"] for r in ledger.sessions()] == ["max_session_age"]


def test_long_session_ids_can_be_ended_by_the_same_id(ledger: Spool) -> None:
    long_id = "x" * 500
    keito.record_llm_call("gpt-4o", input_tokens=1, output_tokens=1, session_id=long_id)
    assert keito.end_session(long_id) is True
    assert ledger.sessions()[0]["session_id"] == long_id[:200]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_never_bills_the_parents_open_session(ledger: Spool, tmp_path: Path) -> None:
    marker = tmp_path / "child.txt"
    with keito.session(session_id="parent-session"):
        keito.record_llm_call("gpt-4o", input_tokens=10, output_tokens=1)
        pid = os.fork()
        if pid == 0:  # the child: records into the inherited context, then ends its own session
            try:
                keito.record_llm_call("gpt-4o", input_tokens=99, output_tokens=1)
                with keito.session(session_id="child-session"):
                    keito.record_llm_call("gpt-4o", input_tokens=5, output_tokens=1)
                marker.write_text("ok")
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
    assert marker.read_text() == "ok"
    sessions = {r["session_id"]: r["input_tokens"] for r in ledger.sessions()}
    assert sessions["parent-session"] == 10  # billed once, by the parent, without the child's call
    assert sessions["child-session"] == 5
    assert list(sessions.values()).count(10) == 1


_FORK_DURING_WARM_UP = """
import os, signal, sys, time
import keito_instrument as keito
keito.configure(api_key="k", account_id="a", base_url="http://127.0.0.1:9", project_id="p", task_id="t",
                expense_category_id="c")
run = keito.begin_run()  # the first session opens: the warm-up thread starts importing
time.sleep(float(sys.argv[1]))
pid = os.fork()
if pid == 0:
    signal.alarm(10)  # a child stuck on an import lock the warm-up held at fork time dies here
    child = keito.begin_run()
    keito.end_run(child)
    import asyncio, httpx  # noqa: F401
    os._exit(0)
_, status = os.waitpid(pid, 0)
keito.end_run(run)
print("hung" if os.WIFSIGNALED(status) else "ok")
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.parametrize("delay", ["0", "0.02", "0.1"])
def test_a_fork_during_the_warm_up_never_leaves_the_child_stuck(tmp_path: Path, delay: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEITO_")}
    env["KEITO_LEDGER"] = str(tmp_path / "fork.sqlite3")
    result = subprocess.run([sys.executable, "-c", _FORK_DURING_WARM_UP, delay], capture_output=True, text=True,
                            env=env, timeout=60)
    assert result.stdout.strip() == "ok", result.stderr[-2000:]
