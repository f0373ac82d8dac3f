"""Each benchmark still runs (in its --quick form). No timing is asserted here: numbers are read
by people from the full runs (docs/performance.md), never turned into flaky timed tests."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = sorted(p.name for p in (ROOT / "benchmarks").glob("bench_*.py"))
# The framework a benchmark measures: without it (the core-only test run) it is skipped.
NEEDS = {"bench_langchain.py": "langchain_core", "bench_crewai.py": "crewai", "bench_otel.py": "opentelemetry.sdk",
         "bench_openai.py": "openai", "bench_anthropic.py": "anthropic", "bench_cpu.py": "langchain_core"}
# Benchmarks that also print their results as JSON (--json).
WITH_JSON = ("bench_anthropic.py", "bench_openai.py")


def _run_quick(name: str, tmp_path: Path, *options: str) -> subprocess.CompletedProcess[str]:
    if name in NEEDS and importlib.util.find_spec(NEEDS[name].split(".")[0]) is None:
        pytest.skip(f"{NEEDS[name]} is not installed")
    env = {**os.environ, "KEITO_LEDGER": str(tmp_path / "bench.sqlite3"), "CREWAI_DISABLE_TELEMETRY": "true"}
    for var in ("KEITO_API_KEY", "KEITO_ACCOUNT_ID"):
        env.pop(var, None)
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), "--quick", *options],
                            capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_runs_in_quick_mode(name: str, tmp_path: Path) -> None:
    result = _run_quick(name, tmp_path)
    assert result.stdout.strip(), "a benchmark prints its table"


@pytest.mark.parametrize("name", WITH_JSON)
def test_client_hook_benchmark_prints_json_and_ours_counts_every_call(name: str, tmp_path: Path) -> None:
    found = json.loads(_run_quick(name, tmp_path, "--json", "--no-peers").stdout)
    assert found["benchmark"] == name.removesuffix(".py") and found["quick"] is True
    ours = [v for v in found["variants"] if v["role"] == "ours"]
    assert ours and all(v["recorded"] == v["made"] > 0 for v in ours), ours
    assert {v["group"] for v in found["variants"] if v["role"] == "bare"} == {"in-process", "socket"}
    assert [t["target"] for t in found["targets"]] == ["ours <= 2x the floor"]


def test_cpu_benchmark_without_peers_still_delivers_every_session(tmp_path: Path) -> None:
    # (bench_cpu exits 1 when a session of ours was not delivered exactly once: _run_quick checks the code)
    out = _run_quick("bench_cpu.py", tmp_path, "--no-peers").stdout
    assert "0 duplicates" in out and "the targets cannot be checked" in out
