"""The offline example and the benchmark run as a user would run them (in a subprocess)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from keito_instrument._spool import Spool

REPO = Path(__file__).resolve().parents[3]


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def run_script(tmp_path: Path, *argv: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KEITO_LEDGER": str(tmp_path / "ledger.sqlite3")}
    for var in ("KEITO_API_KEY", "KEITO_ACCOUNT_ID", "KEITO_LANGCHAIN_INSTRUMENT", "LANGSMITH_TRACING"):
        env.pop(var, None)
    return subprocess.run(
        [sys.executable, *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=tmp_path,
        check=False,
    )


def test_example_bills_two_turns_as_one_session(tmp_path: Path) -> None:
    done = run_script(tmp_path, str(REPO / "examples" / "langchain_agent.py"))
    assert done.returncode == 0, done.stderr
    assert "session ticket-1042: 3 LLM calls, 1 tool call(s), 1478 tokens" in done.stdout
    ledger = Spool(tmp_path / "ledger.sqlite3")
    try:
        [row] = ledger.sessions()
        assert (row["session_id"], row["llm_calls"], row["tool_calls"]) == ("ticket-1042", 3, 1)
        assert (row["input_tokens"], row["output_tokens"], row["agent_id"]) == (1430, 48, "support-bot")
        kinds = sorted(r["kind"] for r in ledger.records("ticket-1042"))
        assert kinds == ["expense", "time_entry"]
    finally:
        ledger.close()


def test_benchmark_quick_run(tmp_path: Path) -> None:
    done = run_script(tmp_path, str(REPO / "benchmarks" / "bench_langchain.py"), "--quick")
    assert done.returncode == 0, done.stderr
    expected = [
        "no callbacks",
        "no-op inline handler",
        "UsageMetadataCallbackHandler",
        "keito handler (in a session)",
        "keito handler (session per invoke)",
    ]
    peers = {
        "langfuse": "Langfuse CallbackHandler",
        "langsmith": "LangSmith LangChainTracer",
        "openinference.instrumentation.langchain": "OpenInference instrumentor",
    }
    expected += [name for module, name in peers.items() if _installed(module)]
    for variant in expected:
        assert variant in done.stdout, done.stdout
    assert "target 1:" in done.stdout and "target 2:" in done.stdout
