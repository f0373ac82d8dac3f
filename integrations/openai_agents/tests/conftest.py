"""Fixtures for the OpenAI Agents SDK tests: the real SDK against a local Responses API server.

The SDK's default trace processor exports traces to api.openai.com from a background thread; it
is removed here, before any test runs a trace (`set_trace_processors([])`), and every test fails
if anything in the process tried to connect or resolve a name beyond loopback, even when the
caller swallowed the root conftest's refusal.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

agents = pytest.importorskip("agents")

from _fake_responses import Call  # noqa: E402
from agents import Agent, OpenAIResponsesModel, RunConfig, Runner, TracingProcessor, function_tool  # noqa: E402
from openai import AsyncOpenAI  # noqa: E402

from keito_instrument.integrations import openai_agents as keito_agents  # noqa: E402

agents.set_trace_processors([])  # the SDK's exporter to OpenAI's servers: never in these tests

_LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


def _is_loopback(host: object) -> bool:
    text = host.decode() if isinstance(host, bytes) else str(host)
    return text in _LOOPBACK or text.startswith("127.")


@pytest.fixture(autouse=True)
def _nothing_beyond_loopback(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Record (and refuse) every connection or lookup beyond loopback; fail the test if one happened."""
    request.getfixturevalue("_no_network")  # the root guard first, so this one sits in front of it
    attempts: list[object] = []
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def connect(self: socket.socket, address: object) -> None:
        if isinstance(address, tuple) and address and not _is_loopback(address[0]):
            attempts.append(address)
            raise OSError(f"no network beyond loopback in these tests: {address!r}")
        real_connect(self, address)  # type: ignore[arg-type]

    def getaddrinfo(host: object, *args: Any, **kwargs: Any) -> Any:
        if host is not None and not _is_loopback(host):
            attempts.append(host)
            raise socket.gaierror(f"no name lookups beyond loopback in these tests: {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield
    assert not attempts, f"network attempts beyond loopback: {attempts!r}"


class Recorder(TracingProcessor):
    """An independent record of what the SDK traced: the oracle for sessions, spans and times."""

    def __init__(self) -> None:
        self.traces: list[Any] = []
        self.spans: list[Any] = []
        self._lock = threading.Lock()

    def on_trace_start(self, trace: Any) -> None:
        with self._lock:
            self.traces.append(trace)

    def on_trace_end(self, trace: Any) -> None:
        pass

    def on_span_start(self, span: Any) -> None:
        pass

    def on_span_end(self, span: Any) -> None:
        with self._lock:
            self.spans.append(span)

    def shutdown(self) -> None:
        pass

    def force_flush(self) -> None:
        pass

    def of_kind(self, kind: str) -> list[Any]:
        """The finished spans of one kind ('response', 'function', 'handoff', ...)."""
        return [s for s in self.spans if s.span_data.type == kind]


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    """Our processor and a `Recorder` beside it, alone on the SDK's trace provider."""
    agents.set_trace_processors([])
    keito_agents.instrument()
    tally = Recorder()
    agents.add_trace_processor(tally)
    try:
        yield tally
    finally:
        keito_agents.uninstrument()
        agents.set_trace_processors([])


def model_for(base_url: str) -> OpenAIResponsesModel:
    """The SDK's own Responses model on a real `AsyncOpenAI` client pointed at the local server."""
    client = AsyncOpenAI(base_url=base_url, api_key="fake", max_retries=0)
    return OpenAIResponsesModel(model="gpt-4o-mini", openai_client=client)


@function_tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def adder(base_url: str, **kwargs: Any) -> Agent[Any]:
    """An agent with one tool, on the local server."""
    return Agent(name="Adder", instructions="Add numbers.", tools=[add], model=model_for(base_url), **kwargs)


SCRIPT: list[str | Call] = [Call("add", {"a": 2, "b": 3}), "The sum is 5."]


def run(mode: str, agent: Agent[Any], question: str, config: RunConfig | None = None) -> str:
    """One agent run through the Runner entry point `mode`; returns its final output."""
    if mode == "run_sync":
        # A fresh current loop, as a plain script has: openai-agents 0.2 runs on the current loop,
        # which an earlier asyncio.run() in this thread closed and unset.
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            return str(Runner.run_sync(agent, question, run_config=config).final_output)
        finally:
            asyncio.set_event_loop(None)
            loop.close()
    if mode == "run":
        return str(asyncio.run(Runner.run(agent, question, run_config=config)).final_output)

    async def streamed() -> str:
        result = Runner.run_streamed(agent, question, run_config=config)
        async for _event in result.stream_events():
            pass
        return str(result.final_output)

    return asyncio.run(streamed())
