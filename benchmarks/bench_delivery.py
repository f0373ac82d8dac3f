"""Delivery benchmarks, side by side in one run (no timed asserts: read the ratios).

1. Throughput: sessions delivered per second by keito-instrument's exporter to the local
   KeitoTestServer, next to a raw httpx async loop POSTing the same payloads to the same server
   (reset between runs) with the same concurrency, the two alternating round by round. Target: at
   least 0.8x of the raw loop. Both run in this process, server included, so the CPU column
   (process CPU time per session, every thread) is the steadier figure on a busy machine.
2. Session-end cost on the host's thread: with credentials and the server down, next to no
   credentials at all. Target: the same (the host never waits on the network).

    .venv/bin/python benchmarks/bench_delivery.py            # full run
    .venv/bin/python benchmarks/bench_delivery.py --quick    # a few seconds (smoke test)
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import keito_instrument as keito
from keito_instrument import _config
from keito_instrument._export import client as kc
from keito_instrument._spool import get_spool
from keito_instrument.testing import KeitoTestServer

CONCURRENCY = 8


def make_sessions(n: int) -> None:
    for i in range(n):
        with keito.session(agent_id="bench"):
            keito.record_llm_call("gpt-4o", "openai", input_tokens=1200 + i, output_tokens=300)


def fresh(ledger: Path, **settings: Any) -> None:
    _config.reset_settings()
    keito.configure(ledger_path=str(ledger), max_concurrency=CONCURRENCY, **settings)


def connect(server: KeitoTestServer) -> dict[str, Any]:
    return {
        "api_key": server.api_key,
        "account_id": server.account_id,
        "base_url": server.url,
        "project_id": server.project_id,
        "task_id": server.task_id,
        "expense_category_id": server.expense_category_id,
    }


async def raw_loop(server: KeitoTestServer, records: list[tuple[str, dict[str, Any]]]) -> tuple[float, float]:
    """The baseline: POST every payload with an httpx.AsyncClient and a semaphore. (wall s, CPU s)."""
    settings = keito.configure(**connect(server))
    sem = asyncio.Semaphore(CONCURRENCY)
    async with kc.make_client(settings) as client:

        async def one(path: str, payload: dict[str, Any]) -> None:
            async with sem:
                response = await client.post(path, json=payload)
                response.raise_for_status()

        started, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(one(path, payload) for path, payload in records))
        return time.perf_counter() - started, time.process_time() - cpu


def exporter_run(server: KeitoTestServer, ledger: Path) -> tuple[float, float]:
    """keito-instrument: release the ledger's local records and flush them. (wall s, CPU s)."""
    fresh(ledger, **connect(server))
    get_spool().connect()  # opening the ledger is not delivery
    started, cpu = time.perf_counter(), time.process_time()
    get_spool().release_local()
    ok = keito.flush(300.0)
    elapsed, used = time.perf_counter() - started, time.process_time() - cpu
    keito.shutdown(5.0)
    assert ok, "the exporter did not deliver everything"
    return elapsed, used


def throughput(tmp: Path, sessions: int, rounds: int) -> list[list[str]]:
    template = tmp / "template.sqlite3"
    ids = KeitoTestServer()  # never started: only its default ids, so both senders POST complete payloads
    fresh(
        template, project_id=ids.project_id, task_id=ids.task_id, expense_category_id=ids.expense_category_id
    )
    make_sessions(sessions)
    spool = get_spool()
    records = [(r["path"], r["payload"]) for r in spool.records()]
    spool.close()
    raw_runs: list[tuple[float, float]] = []
    keito_runs: list[tuple[float, float]] = []
    with KeitoTestServer() as server:  # one server for both senders, reset between runs
        asyncio.run(raw_loop(server, records[:50]))  # warm up httpx and the server's code paths
        for n in range(rounds):
            ledger = tmp / f"round{n}.sqlite3"
            with sqlite3.connect(template) as src, sqlite3.connect(ledger) as dst:
                src.backup(dst)  # a consistent copy, WAL included
            for sender in ("raw", "keito") if n % 2 == 0 else ("keito", "raw"):  # alternate against drift
                server.reset()
                if sender == "raw":
                    raw_runs.append(asyncio.run(raw_loop(server, records)))
                else:
                    keito_runs.append(exporter_run(server, ledger))
                assert len(server.time_entries) == sessions and not server.duplicates()
    raw, ours = (statistics.median(t for t, _ in runs) for runs in (raw_runs, keito_runs))
    raw_cpu, our_cpu = (statistics.median(c for _, c in runs) for runs in (raw_runs, keito_runs))
    return [
        ["raw httpx async loop", f"{sessions / raw:,.0f}", f"{len(records) / raw:,.0f}", "1.00x",
         f"{raw_cpu / sessions * 1e3:.2f}", "1.00x"],
        [
            "keito-instrument exporter",
            f"{sessions / ours:,.0f}",
            f"{len(records) / ours:,.0f}",
            f"{raw / ours:.2f}x (target >= 0.80x)",
            f"{our_cpu / sessions * 1e3:.2f}",
            f"{raw_cpu / our_cpu:.2f}x",
        ],
    ]


def session_end_cost(tmp: Path, sessions: int, rounds: int) -> list[list[str]]:
    results: dict[str, list[float]] = {"no credentials": [], "credentials, server down": []}
    with KeitoTestServer() as server:
        down = connect(server)
    for n in range(rounds):
        for name in list(results)[:: 1 if n % 2 == 0 else -1]:  # alternate the order against drift
            fresh(tmp / f"cost-{n}-{name[:2]}.sqlite3", **(down if "down" in name else {}))
            make_sessions(20)  # warm up (and, with credentials, start the exporter)
            started = time.perf_counter()
            make_sessions(sessions)
            results[name].append((time.perf_counter() - started) / sessions * 1e6)
            keito.shutdown(0.2)
    base = statistics.median(results["no credentials"])
    return [
        [name, f"{statistics.median(v):,.0f}", f"{statistics.median(v) / base:.2f}x"]
        for name, v in results.items()
    ]


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small sizes, one round")
    parser.add_argument("--sessions", type=int, default=None)
    args = parser.parse_args()
    sessions = args.sessions or (200 if args.quick else 2000)
    rounds = 1 if args.quick else 3
    tmp = Path(tempfile.mkdtemp(prefix="keito-bench-"))
    try:
        print(
            f"delivery throughput: {sessions} sessions (2 records each), concurrency {CONCURRENCY}, "
            f"median of {rounds}"
        )
        header = ["sender", "sessions/s", "records/s", "vs raw", "CPU ms/session", "CPU vs raw"]
        print(table(header, throughput(tmp, sessions, rounds)))
        cost_rounds = 1 if args.quick else 5  # cheap, and the noisier of the two on a shared machine
        print(f"\nsession-end cost on the host thread ({sessions} sessions, median of {cost_rounds})")
        print(
            table(
                ["configuration", "us/session", "vs no credentials"],
                session_end_cost(tmp, sessions, cost_rounds),
            )
        )
    finally:
        keito.shutdown(1.0)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
