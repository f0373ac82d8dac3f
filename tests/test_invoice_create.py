"""`keito-instrument invoice --create`: one invoice in Keito per client, period and projects, however
often it runs and whatever answer is lost, against the real local test server."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime
from typing import Any

import jsonschema
import pytest

import keito_instrument as keito
from keito_instrument import invoice
from keito_instrument.cli import main
from keito_instrument.testing import Fault, KeitoTestServer
from keito_instrument.testing._invoices import new_invoice
from tests.contract import _components, _to_json_schema
from tests.test_invoice import PRICES, book, quiet_start

pytestmark = pytest.mark.timeout(120)


def contract(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = _to_json_schema(_components()[name])
    return schema


@pytest.fixture
def delivered(keito_server: KeitoTestServer) -> list[str]:
    """The booked sessions delivered to the test server; the CLI arguments of their period."""
    keito.configure(timezone="UTC", price_overrides=PRICES)
    start = quiet_start(9000)
    book(start)
    assert keito.flush(15.0)
    assert len(keito_server.time_entries) == 6 and len(keito_server.expenses) == 3  # 3 of them outcomes
    first, last = datetime.fromtimestamp(start, UTC).date(), datetime.now(UTC).date()
    return ["invoice", "--client-id", "cl-acme", "--from", first.isoformat(), "--to", last.isoformat(),
            "--hourly-rate", "120", "--llm-markup", "20"]


def posts(server: KeitoTestServer) -> list[Any]:
    return [r for r in server.requests if r.method == "POST" and r.path == "/api/v2/invoices"]


def test_create_twice_makes_one_invoice_valid_against_the_contract(
        keito_server: KeitoTestServer, delivered: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*delivered, "--create"]) == 0
    assert "created invoice" in capsys.readouterr().err
    assert main([*delivered, "--create"]) == 0
    assert "already exists" in capsys.readouterr().err
    assert len(keito_server.invoices) == 1 and len(posts(keito_server)) == 1
    [sent] = posts(keito_server)
    jsonschema.validate(sent.body, contract("InvoiceCreate"), format_checker=jsonschema.FormatChecker())
    [stored] = keito_server.invoices
    jsonschema.validate(stored, contract("Invoice"), format_checker=jsonschema.FormatChecker())
    assert stored["amount"] == 371.91  # 2.75 h x 120 + 1.20 x 1.2 + 40.47 (see test_invoice)
    assert stored["client_id"] == "cl-acme" and stored["period_end"] == delivered[6]
    assert {item["project_id"] for item in stored["line_items"]} == {"p-web", "p-api"}
    assert sent.headers["Keito-Account-Id"] == keito_server.account_id


@pytest.mark.parametrize("fault", ["drop_after_commit", "error_after_commit"])
def test_a_lost_answer_is_found_by_listing_not_created_again(
        keito_server: KeitoTestServer, delivered: list[str], fault: str, capsys: pytest.CaptureFixture[str]) -> None:
    getattr(keito_server, fault)()  # Keito stores the invoice, then the answer is lost (or a 500)
    assert main([*delivered, "--create"]) == 0
    assert "confirmed by listing" in capsys.readouterr().err
    assert len(keito_server.invoices) == 1 and len(posts(keito_server)) == 1
    assert main([*delivered, "--create"]) == 0  # and a rerun finds it too
    assert "already exists" in capsys.readouterr().err
    assert len(keito_server.invoices) == 1 and len(posts(keito_server)) == 1


def test_a_failure_before_storing_is_retried_after_a_listing(
        keito_server: KeitoTestServer, delivered: list[str]) -> None:
    keito_server.fail_next(503, methods=("POST",))
    assert main([*delivered, "--create"]) == 0
    assert len(keito_server.invoices) == 1 and len(posts(keito_server)) == 2
    lists = [r for r in keito_server.requests if r.method == "GET" and r.path == "/api/v2/invoices"]
    assert len(lists) == 2  # a listing before each POST


def test_the_marker_is_found_past_the_first_page(keito_server: KeitoTestServer, delivered: list[str]) -> None:
    for n in range(250):  # other invoices of the same client, listed first
        keito_server.invoices.append(new_invoice({"client_id": "cl-acme", "notes": f"manual {n}"}, n + 1))
    assert main([*delivered, "--create"]) == 0
    assert main([*delivered, "--create"]) == 0
    assert len(keito_server.invoices) == 251 and len(posts(keito_server)) == 1
    pages = {r.query["page"][0] for r in keito_server.requests if r.path == "/api/v2/invoices" and r.method == "GET"}
    assert pages == {"1", "2"}


def test_new_records_for_an_invoiced_period_are_a_conflict_not_a_second_invoice(
        keito_server: KeitoTestServer, delivered: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*delivered, "--create"]) == 0
    run = keito.begin_run(None, started_at=time.time() - 600, agent_id="coder", project_id="p-web")
    assert run is not None
    keito.end_run(run, ended_at=time.time() - 300)
    assert keito.flush(10.0)
    capsys.readouterr()
    assert main([*delivered, "--create"]) == 1
    assert "other line items" in capsys.readouterr().err
    assert len(keito_server.invoices) == 1 and len(posts(keito_server)) == 1
    # another project set (or period) is another invoice
    assert main([*delivered, "--project-id", "p-api", "--create"]) == 0
    assert len(keito_server.invoices) == 2


def test_a_preview_sends_nothing(keito_server: KeitoTestServer, delivered: list[str],
                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert keito.shutdown(5.0)  # the exporter is done: any request now would be the preview's
    seen = len(keito_server.requests)
    assert main(delivered) == 0
    assert main([*delivered, "--format", "json"]) == 0
    assert main([*delivered, "--include-local"]) == 0
    assert "TOTAL" in capsys.readouterr().out
    assert len(keito_server.requests) == seen and keito_server.invoices == []


def test_the_api_key_is_never_printed_even_when_the_server_echoes_it(
        keito_server: KeitoTestServer, delivered: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    keito_server.misbehave_next(Fault("echo_auth", status=400, methods=("POST",)))
    assert main([*delivered, "--create"]) == 1
    captured = capsys.readouterr()
    assert "refused" in captured.err
    assert keito_server.api_key not in captured.err + captured.out
    assert keito_server.invoices == []


def test_create_needs_credentials_and_line_items(ledger: object, capsys: pytest.CaptureFixture[str]) -> None:
    empty = invoice.draft("cl", date(2026, 5, 1), date(2026, 5, 31))
    with pytest.raises(ValueError, match="credentials"):
        invoice.create(empty)
    keito.configure(api_key="kto_x", account_id="cm_x", base_url="http://127.0.0.1:9")
    with pytest.raises(ValueError, match="no line items"):
        invoice.create(empty)
    assert main(["invoice", "--client-id", "cl", "--from", "2026-05-01", "--to", "2026-05-31", "--create"]) == 1
    assert "nothing to invoice" in capsys.readouterr().err


def test_an_unreachable_keito_is_reported_and_nothing_is_assumed(delivered: list[str],
                                                                keito_server: KeitoTestServer) -> None:
    result = invoice.draft("cl-acme", delivered[4], delivered[6], hourly_rate=120)
    keito_server.stop()
    with pytest.raises(invoice.InvoiceError, match="rerun the same command"):
        invoice.create(result, attempts=2, timeout=2.0)
    keito_server.start()
    assert invoice.create(result).status == "created"
    assert invoice.create(result).status == "exists"
    assert len(keito_server.invoices) == 1
