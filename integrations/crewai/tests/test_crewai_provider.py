"""crewai's own OpenAI provider against a local fake server: the usage we bill is crewai's.

Also proves that a crew run connects to nothing but 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import pytest
from _fake_openai import USAGE, ToolCall, fake_openai
from _socket_guard import take_attempts
from crewai import LLM
from crewai.events import LLMCallCompletedEvent, LLMCallFailedEvent, crewai_event_bus

from conftest import make_crew, settle
from keito_instrument._spool import Spool
from keito_instrument.integrations import crewai as keito_crewai


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[object]]:
    """Every address anything connects or resolves to during the test (on top of the root guard)."""
    seen: list[object] = []
    guarded_connect = socket.socket.connect
    real_getaddrinfo = socket.getaddrinfo

    def connect(self: socket.socket, address: object) -> None:
        seen.append(address)
        guarded_connect(self, address)  # type: ignore[arg-type]

    def getaddrinfo(host: object, *args: object, **kwargs: object) -> object:
        seen.append(host)
        return real_getaddrinfo(host, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield seen


@pytest.mark.parametrize("stream", [False, True])
def test_real_openai_provider_usage_is_billed_and_only_loopback_is_used(
    listener: keito_crewai.KeitoCrewListener, ledger: Spool, connections: list[object], stream: bool
) -> None:
    # Native tool calling (crewai's OpenAI provider supports it) unless streaming.
    first: str | ToolCall = "The sum is 5." if stream else ToolCall("add", {"a": 2, "b": 3})
    with fake_openai([first, "The sum is 5.", "The sum is 5."]) as server:
        llm = LLM(model="gpt-4o-mini", base_url=server.base_url, api_key="sk-fake", stream=stream)
        assert type(llm).__name__ == "OpenAICompletion"  # crewai's native provider, not a fake
        crew = make_crew(llm)
        reported: list[dict[str, object]] = []  # the usage crewai's provider itself put on its events
        crewai_event_bus.register_handler(LLMCallCompletedEvent, lambda _s, e: reported.append(dict(e.usage or {})))
        result = crew.kickoff()
        settle(listener)

    assert "5" in result.raw
    calls = len(server.requests)
    assert calls == (2 if stream else 3)
    [row] = ledger.sessions()
    assert row["llm_calls"] == calls
    assert row["input_tokens"] == calls * USAGE["prompt_tokens"]
    assert row["output_tokens"] == calls * USAGE["completion_tokens"]
    [expense] = [r for r in ledger.records(session_id=row["session_id"]) if r["kind"] == "expense"]
    md = expense["payload"]["metadata"]
    assert md["cache_read_tokens"] == calls * 40
    # Reasoning tokens are billed as crewai's provider reports them (1.13 drops them; later ones carry them).
    assert md["reasoning_tokens"] == (calls * 4 if any("reasoning_tokens" in u for u in reported) else 0)
    assert len(reported) == calls
    assert md["model"] == "gpt-4o-mini" and md["provider"] == "openai"
    assert md["tool_calls"] == (0 if stream else 1)
    # gpt-4o-mini is a known model: the expense is priced, not left unknown
    assert md["cost_usd"] is not None and md["cost_usd"] > 0

    assert connections, "the crew reached its LLM through a socket"
    for address in connections:
        host = address[0] if isinstance(address, tuple) else address
        assert str(host) in {"127.0.0.1", "localhost", "::1"}, f"connected to {address!r}"


def test_the_socket_guard_refuses_and_records_what_leaves_loopback() -> None:
    """The guard behind every test here: even an attempt whose error is swallowed is recorded."""
    with pytest.raises(OSError):
        socket.create_connection(("telemetry.crewai.com", 4319), timeout=1)  # a name lookup
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        with pytest.raises(OSError):
            raw.connect(("192.0.2.1", 443))  # an address: no lookup
        with pytest.raises(OSError):
            raw.connect_ex(("198.51.100.7", 80))
    finally:
        raw.close()
    with contextlib.suppress(OSError):  # as a library retrying quietly would
        socket.getaddrinfo("pypi.org", 443)
    assert take_attempts() == ["telemetry.crewai.com", ("192.0.2.1", 443), ("198.51.100.7", 80), "pypi.org"]
    with socket.create_server(("127.0.0.1", 0)) as server:  # loopback is allowed
        socket.create_connection(server.getsockname(), timeout=1).close()
    assert take_attempts() == []


def test_a_stream_cut_after_output_began_is_a_call_with_usage_missing(
    listener: keito_crewai.KeitoCrewListener, ledger: Spool
) -> None:
    # The provider bills what it streamed before the connection dropped: the call is counted, its
    # usage marked missing (so the cost is unknown, never a silent 0), and the failure an error.
    with fake_openai(["The sum is 5."], cut=1) as server:
        llm = LLM(model="gpt-4o-mini", base_url=server.base_url, api_key="sk-fake", stream=True, max_retries=0)
        failed: list[object] = []
        crewai_event_bus.register_handler(LLMCallFailedEvent, lambda _s, e: failed.append(e))
        with contextlib.suppress(Exception):
            make_crew(llm).kickoff()
        settle(listener)
    assert failed, "the cut stream reached crewai as a failed call"
    [row] = ledger.sessions()
    assert row["llm_calls"] == len(server.requests)  # the cut call and any retries that followed
    assert row["errors"] >= 1
    [expense] = [r for r in ledger.records(session_id=row["session_id"]) if r["kind"] == "expense"]
    meta = expense["payload"]["metadata"]
    assert meta["usage_missing"] == 1 and meta["cost_unknown"] is True
