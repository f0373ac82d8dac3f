"""invoice.draft(): agent time, LLM cost and outcomes of a period from the ledger, to the cent.

Sessions have exact durations (the adapter API's event times), LLM calls are priced with
price_overrides at round USD prices per million tokens, so every expected amount below is
computed from the inputs, never read back from the ledger.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

import keito_instrument as keito
from keito_instrument import invoice
from keito_instrument._spool import Spool
from keito_instrument.cli import main

PRICES = {"acme-large": {"input": 2.0, "output": 8.0}, "acme-small": {"input": 0.5, "output": 1.5}}
RATE = Decimal("120")


def cents(value: Decimal) -> Decimal:
    return value.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def quiet_start(span: float) -> float:
    """A start about 3 hours ago with [start, start + span] inside one UTC day."""
    start = time.time() - 3 * 3600
    midnight = start - start % 86400
    return min(max(start, midnight + 600), midnight + 86400 - 600 - span)


def work(start: float, seconds: float, agent: str, project: str, calls: list[tuple[str, int, int]],
         outcomes: Sequence[tuple[str, float, float | None]] = ()) -> None:
    run = keito.begin_run(None, started_at=start, agent_id=agent, project_id=project, task_id="t-dev",
                          framework="test")
    assert run is not None
    for model, tokens_in, tokens_out in calls:
        keito.record_llm_call(model, "acme", input_tokens=tokens_in, output_tokens=tokens_out,
                              session_id=run.session_id)
    for kind, quantity, price in outcomes:
        keito.log_outcome(kind, quantity=quantity, unit_price=price, session_id=run.session_id)
    keito.end_run(run, ended_at=start + seconds)


def book(start: float) -> None:
    """Three sessions: coder 1.5 h + 0.75 h on p-web, reviewer 0.5 h on p-api.

    LLM (USD): acme-large 0.60 + 0.30 and acme-small 0.25 on p-web; acme-small 0.05 on p-api.
    Outcomes: ticket_resolved 2 + 1 at 0.99 (p-web), pr_reviewed 3 at 12.50 (p-api).
    """
    work(start, 5400, "coder", "p-web", [("acme-large", 100_000, 50_000), ("acme-small", 200_000, 100_000)],
         [("ticket_resolved", 2, 0.99)])
    work(start + 6000, 2700, "coder", "p-web", [("acme-large", 50_000, 25_000)], [("ticket_resolved", 1, 0.99)])
    work(start + 600, 1800, "reviewer", "p-api", [("acme-small", 40_000, 20_000)], [("pr_reviewed", 3, 12.5)])


def deliver_all(ledger: Spool) -> None:
    """Mark every record delivered, as the exporter does once Keito stored it."""
    with ledger.transaction() as conn:
        conn.execute("UPDATE records SET state = 'delivered', delivered_at = ?", (time.time(),))


@pytest.fixture
def period(ledger: Spool) -> tuple[date, date]:
    keito.configure(timezone="UTC", price_overrides=PRICES)
    start = quiet_start(9000)
    book(start)
    assert keito.flush(10.0)
    deliver_all(ledger)
    # outcomes are dated when logged (now), the time when worked: the period covers both
    return datetime.fromtimestamp(start, UTC).date(), datetime.now(UTC).date()


HOURS = {("coder", "p-web"): Decimal("2.25"), ("reviewer", "p-api"): Decimal("0.50")}
LLM_USD = {("acme-large", "p-web"): Decimal("0.90"), ("acme-small", "p-web"): Decimal("0.25"),
           ("acme-small", "p-api"): Decimal("0.05")}
OUTCOMES = {("ticket_resolved", "p-web"): (Decimal(3), Decimal("0.99")),
            ("pr_reviewed", "p-api"): (Decimal(3), Decimal("12.5"))}


def expected_total(factor: Decimal | None) -> Decimal:
    """hours x rate + cost x (1 + markup) + sum(quantity x price), each line to the cent."""
    time_part = sum((cents(h * RATE) for h in HOURS.values()), Decimal(0))
    llm_part = Decimal(0) if factor is None else sum((cents(c * factor) for c in LLM_USD.values()), Decimal(0))
    outcome_part = sum((cents(q * p) for q, p in OUTCOMES.values()), Decimal(0))
    return time_part + llm_part + outcome_part


@pytest.mark.parametrize(("llm", "markup", "factor"), [
    ("pass-through", 0, Decimal(1)), ("cost-plus", 15, Decimal("1.15")), ("cost-plus", 20, Decimal("1.2")),
    ("bundled", 0, None),
])
def test_the_total_is_hours_times_rate_plus_llm_cost_plus_outcomes(
        period: tuple[date, date], llm: invoice._model.LlmPattern, markup: int, factor: Decimal | None) -> None:
    result = invoice.draft("cl-acme", *period, hourly_rate=120, llm=llm, llm_markup_pct=markup)
    assert result.total == expected_total(factor)
    lines = {(line.kind, line.key, line.project_id): line for line in result.lines}
    for (agent, project), hours in HOURS.items():
        line = lines[("agent_time", agent, project)]
        assert (line.quantity, line.unit_price, line.amount) == (hours, RATE, cents(hours * RATE))
    for (model, project), usd in LLM_USD.items():
        if factor is None:
            assert ("llm", model, project) not in lines
        else:
            assert lines[("llm", model, project)].amount == cents(usd * factor)
    for (kind, project), (quantity, price) in OUTCOMES.items():
        line = lines[("outcome", kind, project)]
        assert (line.quantity, line.unit_price, line.amount) == (quantity, price, cents(quantity * price))
    assert result.llm_cost == Decimal("1.20")  # what the expenses billed, whatever the pattern
    assert result.total == sum(line.amount for line in result.lines)


def test_with_round_numbers_the_total_is_the_plain_formula(period: tuple[date, date]) -> None:
    result = invoice.draft("cl-acme", *period, hourly_rate=120, llm="cost-plus", llm_markup_pct=20)
    # 2.75 h x 120 + 1.20 x 1.2 + (3 x 0.99 + 3 x 12.50)
    assert result.total == Decimal("330.00") + Decimal("1.44") + Decimal("40.47") == Decimal("371.91")
    assert [line.kind for line in result.lines] == ["agent_time"] * 2 + ["llm"] * 3 + ["outcome"] * 2


def test_the_llm_line_is_what_the_expenses_billed_in_the_workspace_currency(ledger: Spool) -> None:
    # GBP at 0.8 per USD and a cost_multiplier of 1.5: Keito's expenses carry cost x 1.2 in GBP.
    keito.configure(timezone="UTC", price_overrides=PRICES, currency="GBP", exchange_rate=0.8, cost_multiplier=1.5)
    start = quiet_start(3600)
    work(start, 3600, "coder", "p-web", [("acme-large", 100_000, 50_000)])
    assert keito.flush(10.0)
    deliver_all(ledger)
    [expense] = [r["payload"] for r in ledger.records() if r["kind"] == "expense"]
    assert expense["total_cost"] == pytest.approx(0.72)
    day = datetime.fromtimestamp(start, UTC).date()
    passed = invoice.draft("cl-acme", day, day, llm="pass-through")
    assert passed.currency == "GBP" and passed.total == Decimal("0.72")
    marked = invoice.draft("cl-acme", day, day, llm="cost-plus", llm_markup_pct=50)
    assert marked.total == Decimal("1.08")


def test_only_delivered_records_unless_include_local(ledger: Spool) -> None:
    keito.configure(timezone="UTC", price_overrides=PRICES)
    start = quiet_start(3600)
    work(start, 3600, "coder", "p-web", [("acme-large", 100_000, 50_000)])
    assert keito.flush(10.0)
    day = datetime.fromtimestamp(start, UTC).date()
    assert {r["state"] for r in ledger.records()} == {"local"}
    assert invoice.draft("cl", day, day, hourly_rate=100).lines == ()
    preview = invoice.draft("cl", day, day, hourly_rate=100, include_local=True)
    assert preview.total == Decimal("100.60")
    with ledger.transaction() as conn:  # refused by Keito for good: never invoiced
        conn.execute("UPDATE records SET state = 'dead' WHERE kind = 'expense'")
    assert invoice.draft("cl", day, day, hourly_rate=100, include_local=True).total == Decimal("100.00")


def test_projects_and_period_select_the_records(period: tuple[date, date]) -> None:
    web = invoice.draft("cl-acme", *period, project_ids=["p-web"], hourly_rate=120)
    assert {line.project_id for line in web.lines} == {"p-web"}
    assert web.total == cents(Decimal("2.25") * RATE) + Decimal("1.15") + Decimal("2.97")
    before = period[0] - timedelta(days=1)
    assert invoice.draft("cl-acme", before, before, hourly_rate=120).lines == ()
    after = period[1] + timedelta(days=1)
    assert invoice.draft("cl-acme", after, after + timedelta(days=30), hourly_rate=120).lines == ()


def test_the_period_is_in_the_workspace_time_zone(ledger: Spool) -> None:
    start = time.time() - 7200
    # One of these zones puts the session on another date than UTC, whatever the hour now.
    zone = "Etc/GMT-14" if datetime.fromtimestamp(start, UTC).hour >= 10 else "Etc/GMT+12"
    tz = ZoneInfo(zone)
    if datetime.fromtimestamp(start, tz).date() != datetime.fromtimestamp(start + 60, tz).date():
        start -= 120
    keito.configure(timezone=zone, price_overrides=PRICES)
    work(start, 360, "coder", "p-web", [])  # 0.1 h
    assert keito.flush(10.0)
    deliver_all(ledger)
    local_day, utc_day = datetime.fromtimestamp(start, tz).date(), datetime.fromtimestamp(start, UTC).date()
    assert local_day != utc_day
    assert invoice.draft("cl", local_day, local_day, hourly_rate=60).total == Decimal("6.00")
    assert invoice.draft("cl", utc_day, utc_day, hourly_rate=60).lines == ()
    aware = datetime.fromtimestamp(start, UTC)  # a datetime counts as its date in the workspace zone
    assert invoice.draft("cl", aware, aware, hourly_rate=60).total == Decimal("6.00")


def test_several_models_share_the_billed_amount_exactly(ledger: Spool) -> None:
    # 1/3 and 2/3 of a cost that does not split into whole cents: the shares still add up.
    keito.configure(timezone="UTC", price_overrides={"m.one": {"input": 1.0, "output": 0.0},
                                                     "m.two": {"input": 2.0, "output": 0.0}})
    start = quiet_start(600)
    work(start, 600, "coder", "p-web", [("m.one", 3_333, 0), ("m.two", 3_333, 0)])
    assert keito.flush(10.0)
    deliver_all(ledger)
    day = datetime.fromtimestamp(start, UTC).date()
    result = invoice.draft("cl", day, day)
    lines = {line.key: line for line in result.lines if line.kind == "llm"}
    assert set(lines) == {"m.one", "m.two"}  # model names with dots are read whole
    assert lines["m.one"].amount == Decimal("0.00") and lines["m.two"].amount == Decimal("0.01")
    assert "3.3k input" in lines["m.two"].description


def test_what_cannot_be_billed_is_left_out_and_said(ledger: Spool) -> None:
    keito.configure(timezone="UTC", price_overrides=PRICES)
    start = quiet_start(900)
    work(start, 900, "coder", "p-web", [("no-such-model-xyz", 5_000, 100)],
         [("lead", 1, None), ("ticket_resolved", 1, 5.0)])
    run = keito.begin_run(None, started_at=start, agent_id="intern", project_id="p-web", billable=False)
    assert run is not None
    keito.end_run(run, ended_at=start + 600)
    keito.log_outcome("ticket_resolved", unit_price=5.0, success=False)
    assert keito.flush(10.0)
    deliver_all(ledger)
    result = invoice.draft("cl", datetime.fromtimestamp(start, UTC).date(), datetime.now(UTC).date(),
                           hourly_rate=60)
    kinds = [(line.kind, line.key) for line in result.lines]
    assert kinds == [("agent_time", "coder"), ("outcome", "ticket_resolved")]
    assert result.total == Decimal("15.00") + Decimal("5.00")  # 0.25 h x 60 + 1 x 5
    text = " | ".join(result.notes)
    assert "1 LLM expenses sent in units" in text and "1 outcomes without a unit price" in text
    assert "non-billable time entry" in text and "failed outcomes" in text


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"client_id": ""}, "client_id"),
    ({"period_start": "2026-02-30"}, "period_start"),
    ({"period_end": "31/05/2026"}, "period_end"),
    ({"period_start": "2026-06-01"}, "after period_end"),
    ({"hourly_rate": -1}, "hourly_rate"),
    ({"hourly_rate": "lots"}, "hourly_rate"),
    ({"hourly_rate": float("nan")}, "hourly_rate"),
    ({"llm": "free"}, "llm must be one of pass-through, cost-plus, bundled"),
    ({"llm_markup_pct": 10}, "cost-plus"),
    ({"llm": "cost-plus", "llm_markup_pct": -5}, "llm_markup_pct"),
    ({"project_ids": "p-web"}, "list of project ids"),
    ({"project_ids": []}, "non-empty"),
    ({"ledger": "/nonexistent/ledger.sqlite3"}, "no ledger"),
])
def test_bad_arguments_are_a_clear_value_error(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"client_id": "cl", "period_start": "2026-05-01", "period_end": "2026-05-31", **kwargs}
    with pytest.raises(ValueError, match=message):
        invoice.draft(**args)  # type: ignore[arg-type]


def test_cli_table_and_json(period: tuple[date, date], capsys: pytest.CaptureFixture[str]) -> None:
    start, end = (d.isoformat() for d in period)
    assert main(["invoice", "--client-id", "cl-acme", "--from", start, "--to", end, "--hourly-rate", "120",
                 "--llm-markup", "20"]) == 0
    out = capsys.readouterr().out
    assert "Agent time: coder" in out and "$270.00" in out and "$1.08" in out  # 0.90 x 1.2
    total = next(line for line in out.splitlines() if line.startswith("TOTAL"))
    assert total.split()[-1] == "$371.91"
    assert main(["invoice", "--client-id", "cl-acme", "--from", start, "--to", end, "--hourly-rate", "120",
                 "--llm", "bundled", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["total"] == float(expected_total(None)) and data["subtotals"]["llm"] == 0
    assert data["llm_cost"] == 1.2 and data["request"]["client_id"] == "cl-acme"
    assert data["request"]["line_items"][0] == {"kind": "Service", "description": "Agent time: coder",
                                                "quantity": 2.25, "unit_price": 120, "project_id": "p-web"}


@pytest.mark.parametrize("argv", [["--from", "2026-05-01"], ["--from", "yesterday", "--to", "2026-05-01"],
                                  ["--from", "2026-05-01", "--to", "2026-05-31", "--hourly-rate", "-3"],
                                  ["--from", "2026-05-01", "--to", "2026-05-31", "--llm", "free"]])
def test_cli_bad_arguments_are_a_usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["invoice", "--client-id", "cl", *argv])
    assert exit_info.value.code == 2 and "usage:" in capsys.readouterr().err


def test_cli_inconsistent_options_exit_2(period: tuple[date, date], capsys: pytest.CaptureFixture[str]) -> None:
    start, end = (d.isoformat() for d in period)
    base = ["invoice", "--client-id", "cl", "--from", start, "--to", end]
    assert main([*base, "--llm", "pass-through", "--llm-markup", "10"]) == 2
    assert "cost-plus" in capsys.readouterr().err
    assert main([*base, "--from", "2026-05-02", "--to", "2026-05-01"]) == 2
    assert "after period_end" in capsys.readouterr().err
    assert main([*base, "--create", "--include-local"]) == 2


def test_invoice_on_a_missing_ledger_is_one_line_and_creates_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere" / "ledger.sqlite3"
    assert main(["invoice", "--ledger", str(missing), "--client-id", "cl", "--from", "2026-05-01",
                 "--to", "2026-05-31"]) == 1
    assert "no ledger at" in capsys.readouterr().err and not missing.parent.exists()


def test_the_demo_ends_with_an_invoice_preview(tmp_path: Path) -> None:
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "xdg")}
    demo = subprocess.run([sys.executable, "-m", "keito_instrument.cli", "demo", "--tickets", "2",
                           "--step-seconds", "0"], capture_output=True, text=True, timeout=120, env=env)
    assert demo.returncode == 0, demo.stderr
    preview = demo.stdout[demo.stdout.index("Invoice draft for client demo-client"):]
    assert "Outcome: ticket_resolved" in preview and "$1.98" in preview  # 2 tickets x 0.99
    assert "delivered and local records" in preview
    command = next(line.strip() for line in demo.stderr.splitlines() if "keito-instrument invoice" in line)
    again = subprocess.run([sys.executable, "-m", "keito_instrument.cli", *command.split()[1:]],
                           capture_output=True, text=True, timeout=120, env=env)
    assert again.returncode == 0, again.stderr
    assert "Outcome: ticket_resolved" in again.stdout
