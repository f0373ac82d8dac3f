"""crewai's own OpenAI provider while the OpenAI client is instrumented too (as `keito.instrument()`
does): every call is billed once, into the kickoff's session, by crewai's events (which know the
kickoff, the agent and the task); the client hook leaves calls made inside a crewai LLM call to
them, and counts the calls made outside one as usual.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from _fake_openai import USAGE, fake_openai
from crewai import LLM

import keito_instrument as keito
from conftest import make_crew, settle
from keito_instrument._spool import Spool
from keito_instrument.integrations import crewai as keito_crewai

openai = pytest.importorskip("openai")
from keito_instrument.integrations import openai as keito_openai  # noqa: E402


@pytest.fixture
def client_hook() -> Iterator[None]:
    keito_openai.instrument()
    try:
        yield
    finally:
        keito_openai.uninstrument()


@pytest.mark.parametrize("stream", [False, True])
def test_a_crew_on_the_native_provider_is_billed_once_with_the_client_instrumented(
    listener: keito_crewai.KeitoCrewListener, client_hook: None, ledger: Spool, stream: bool
) -> None:
    with fake_openai(["The sum is 5."] * 3) as server:
        llm = LLM(model="gpt-4o-mini", base_url=server.base_url, api_key="sk-fake", stream=stream)
        assert type(llm).__name__ == "OpenAICompletion"
        crew = make_crew(llm)
        crew.kickoff()
        settle(listener)
        calls = len(server.requests)
    assert calls >= 1
    rows = ledger.sessions()
    assert len(rows) == 1, [(r["session_id"], r["llm_calls"]) for r in rows]  # no stray per-call session
    [row] = rows
    assert row["llm_calls"] == calls
    assert row["input_tokens"] == calls * USAGE["prompt_tokens"]


def test_a_direct_client_call_beside_a_crew_is_still_counted(
    listener: keito_crewai.KeitoCrewListener, client_hook: None, ledger: Spool
) -> None:
    with fake_openai(["The sum is 5."] * 4) as server:
        llm = LLM(model="gpt-4o-mini", base_url=server.base_url, api_key="sk-fake")
        client = openai.OpenAI(base_url=server.base_url, api_key="sk-fake")
        with keito.session("beside-the-crew"):
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
            make_crew(llm).kickoff()
        settle(listener)
    by_id = {r["session_id"]: r for r in ledger.sessions()}
    assert by_id["beside-the-crew"]["llm_calls"] >= 2  # the direct call, and the crew's (joined or its own)
    total = sum(r["llm_calls"] for r in by_id.values())
    assert total == len(server.requests)  # each request once, wherever it is billed
