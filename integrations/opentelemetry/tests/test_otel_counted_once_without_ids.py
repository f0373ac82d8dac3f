"""Counted once when two instrumentation libraries' spans of one call share no response id.

OpenInference's LangChain span of a streamed call, or of any call with `OPENINFERENCE_HIDE_OUTPUTS`,
has no id; OpenLLMetry's `chat` span of the same call has one, in another trace. They pair by their
usage (`_pairing`): the first to end (the client's) is counted, the other is not. The real packages
run against the local fake OpenAI server; hand-made spans from two tracers check the rule's edges.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from uuid import uuid4

import pytest
from _layers import billed, chat, served
from _lc_models import FakeOpenAIChat, reply
from _otel_fakes import Otel
from langchain_core.runnables import RunnableLambda
from opentelemetry.trace import Tracer

import keito_instrument as keito
from keito_instrument._spool import Spool
from keito_instrument.integrations.otel import _attrs as attrs
from keito_instrument.integrations.otel._pairing import Call, Pairs, pending

OI_SCOPE = "openinference.instrumentation.langchain"


def streamed(model: Any) -> RunnableLambda[str, str]:
    return RunnableLambda(lambda q: "".join(str(chunk.content) for chunk in model.stream(q)))


def spans_without_a_shared_id(otel: Otel) -> tuple[list[Any], list[Any]]:
    """The OpenInference LLM spans (none carries an id) and the client's spans (each in a trace of its own)."""
    spans = otel.exported.get_finished_spans()
    llm = [s for s in spans if (s.attributes or {}).get("openinference.span.kind") == "LLM"]
    client = [s for s in spans if (s.attributes or {}).get("gen_ai.operation.name") == "chat"]
    assert all(attrs.response_id(dict(s.attributes or {})) is None for s in llm)
    assert {s.context.trace_id for s in llm}.isdisjoint(s.context.trace_id for s in client)
    return llm, client


def test_a_streamed_call_is_billed_once_by_the_client_span(client_spans: Otel, ledger: Spool, server: Any) -> None:
    chain = streamed(chat(server, stream_usage=True))
    for question in ("a", "b", "c"):
        assert chain.invoke(question) == "Hello from the fake server"
    llm, client = spans_without_a_shared_id(client_spans)
    assert len(llm) == len(client) == 3
    assert billed(ledger) == served(server) == (3, 3600, 900)
    # The first span of a pair to end wins, as with a response id: the client's, in its own trace.
    assert {r["session_id"] for r in ledger.sessions()} == {f"{s.context.trace_id:032x}" for s in client}
    assert len(pending) == 0  # each noted call paired once and was taken out


async def test_streamed_async_calls_are_billed_once(client_spans: Otel, ledger: Spool, server: Any) -> None:
    model = chat(server, stream_usage=True)
    in_flight = asyncio.Semaphore(4)  # the local server's listen backlog is 5

    async def call(question: str) -> str:
        async with in_flight:
            return "".join([str(chunk.content) async for chunk in model.astream(question)])

    answers = await asyncio.gather(*(RunnableLambda(call).ainvoke("same") for _ in range(8)))
    assert answers == ["Hello from the fake server"] * 8
    llm, client = spans_without_a_shared_id(client_spans)
    assert len(llm) == len(client) == 8
    assert billed(ledger) == served(server) == (8, 9600, 2400)


def test_twenty_concurrent_identical_streamed_calls_on_threads_bill_twenty(
    client_spans: Otel, ledger: Spool, server: Any
) -> None:
    chain = streamed(chat(server, stream_usage=True))
    with ThreadPoolExecutor(4) as pool:  # the local server's listen backlog is 5
        assert list(pool.map(chain.invoke, ["same"] * 20)) == ["Hello from the fake server"] * 20
    llm, client = spans_without_a_shared_id(client_spans)
    assert len(llm) == len(client) == 20
    assert billed(ledger) == served(server) == (20, 24_000, 6_000)


def test_with_outputs_hidden_a_plain_call_is_billed_once(
    client_spans: Otel, ledger: Spool, server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from openinference.instrumentation.langchain import LangChainInstrumentor

    monkeypatch.setenv("OPENINFERENCE_HIDE_OUTPUTS", "true")
    instrumentor = LangChainInstrumentor()  # the fixture's (a singleton): again, reading the setting
    instrumentor.uninstrument()
    instrumentor.instrument(tracer_provider=client_spans.provider)
    model = chat(server)
    for question in ("a", "b"):
        RunnableLambda(lambda q: model.invoke(q).content).invoke(question)
    llm, _ = spans_without_a_shared_id(client_spans)
    assert [(s.attributes or {}).get("output.value") for s in llm] == ["__REDACTED__"] * 2
    assert billed(ledger) == served(server) == (2, 2400, 600)


def test_the_call_is_billed_into_the_session_both_spans_start_in(
    client_spans: Otel, ledger: Spool, server: Any
) -> None:
    from openinference.instrumentation import using_session

    chain = streamed(chat(server, stream_usage=True))
    with keito.session("s1"):
        chain.invoke("a")
    with using_session("conversation-1"):
        chain.invoke("b")
        chain.invoke("c")
    assert keito.end_session("conversation-1")
    rows = sorted((r["session_id"], r["llm_calls"], r["input_tokens"]) for r in ledger.sessions())
    assert rows == [("conversation-1", 2, 2400), ("s1", 1, 1200)]


def test_a_different_call_inside_a_streamed_one_is_billed_too(
    client_spans: Otel, ledger: Spool, server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A client called directly while LangChain's stream is read: its `chat` span lies inside the
    # streamed call's spans, with other usage. It is a call of its own, and the stream still once.
    import _fake_server
    from openai import OpenAI

    client = OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)
    other = {"prompt_tokens": 50, "completion_tokens": 5, "total_tokens": 55}

    def run(question: str) -> str:
        text = ""
        for n, chunk in enumerate(chat(server, stream_usage=True).stream(question)):
            if n == 1:  # the stream's usage is fixed at its request: only the direct call gets `other`
                with monkeypatch.context() as patch:
                    patch.setattr(_fake_server, "CHAT_USAGE", other)
                    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
            text += str(chunk.content)
        return text

    RunnableLambda(run).invoke("a")
    assert served(server) == (2, 1250, 305)
    assert billed(ledger) == (2, 1250, 305)


def test_a_framework_call_with_no_client_span_is_not_taken_for_a_client_call_inside_it(
    client_spans: Otel, ledger: Spool, server: Any
) -> None:
    # A LangChain model whose client is not instrumented (no span of its own) makes a direct,
    # instrumented client call with other usage while it runs: two calls, both billed.
    from openai import OpenAI

    client = OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)

    class Calling(FakeOpenAIChat):
        def _generate(self, *args: Any, **kwargs: Any) -> Any:
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
            return super()._generate(*args, **kwargs)

    RunnableLambda(lambda q: Calling(messages=iter([reply(100, 10)])).invoke(q).content).invoke("a")
    spans = client_spans.exported.get_finished_spans()
    llm = [s for s in spans if (s.attributes or {}).get("openinference.span.kind") == "LLM"]
    [inner] = [s for s in spans if (s.attributes or {}).get("gen_ai.operation.name") == "chat"]
    assert llm[0].start_time < inner.start_time < inner.end_time < llm[0].end_time  # inside, and a model in common
    assert billed(ledger) == (2, 1300, 310)


def test_concurrent_identical_client_calls_alone_are_each_billed(
    client_spans: Otel, ledger: Spool, server: Any
) -> None:
    # One library reports each call once: its spans never pair with each other, however alike.
    from openai import OpenAI

    client = OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)

    def call(_: int) -> str:
        stream = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}],
                                                stream=True, stream_options={"include_usage": True})
        return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(call, range(12))) == ["Hello from the fake server"] * 12
    assert billed(ledger) == served(server) == (12, 14_400, 3_600)


# -- the rule's edges, with hand-made spans from two tracers (two instrumentation libraries) ------


@pytest.fixture
def tracers(otel: Otel) -> tuple[Tracer, Tracer]:
    """A framework's tracer (OpenInference's scope) and a client's, on the processor's provider."""
    return otel.provider.get_tracer(OI_SCOPE), otel.provider.get_tracer("opentelemetry.instrumentation.openai.v1")


def llm_span(model: str = "gpt-4o-mini", inp: int = 100, out: int = 10, response_id: str | None = None
             ) -> dict[str, Any]:
    values: dict[str, Any] = {"openinference.span.kind": "LLM", "llm.model_name": model, "llm.provider": "openai",
                              "llm.token_count.prompt": inp, "llm.token_count.completion": out}
    if response_id is not None:
        values["output.value"] = json.dumps({"llm_output": {"id": response_id}})
    return values


def chat_span(model: str = "gpt-4o-mini", inp: int = 100, out: int = 10, response_id: str | None = None
              ) -> dict[str, Any]:
    values: dict[str, Any] = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                              "gen_ai.request.model": model, "gen_ai.response.model": f"{model}-2024-07-18",
                              "gen_ai.usage.input_tokens": inp, "gen_ai.usage.output_tokens": out}
    if response_id is not None:
        values["gen_ai.response.id"] = response_id
    return values


def one_call(tracers: tuple[Tracer, Tracer], framework: dict[str, Any], client: dict[str, Any],
             client_ends_first: bool = True) -> None:
    """A framework span enclosing a client span, each a root of its own trace."""
    outer = tracers[0].start_span("ChatOpenAI", attributes=framework)
    inner = tracers[1].start_span("openai.chat", attributes=client)
    first, second = (inner, outer) if client_ends_first else (outer, inner)
    first.end()
    second.end()


@pytest.mark.parametrize("client_ends_first", [True, False])
def test_the_pair_is_billed_once_in_either_order(
    otel: Otel, ledger: Spool, tracers: tuple[Tracer, Tracer], client_ends_first: bool
) -> None:
    one_call(tracers, llm_span(), chat_span(response_id=f"chatcmpl-{uuid4()}"), client_ends_first)
    one_call(tracers, llm_span(inp=7), chat_span(inp=7), client_ends_first)  # neither has an id
    assert billed(ledger) == (2, 107, 20)
    assert len(pending) == 0


@pytest.mark.parametrize(
    ("framework", "client"),
    [
        (llm_span(out=11), chat_span()),  # other usage
        (llm_span(model="gpt-4o"), chat_span()),  # no model name in common
        (llm_span(response_id=f"chatcmpl-{uuid4()}"), chat_span(response_id=f"chatcmpl-{uuid4()}")),  # two ids
    ],
    ids=["usage", "model", "ids"],
)
def test_spans_that_differ_are_two_calls(
    otel: Otel, ledger: Spool, tracers: tuple[Tracer, Tracer], framework: dict[str, Any], client: dict[str, Any]
) -> None:
    one_call(tracers, framework, client)
    assert billed(ledger)[0] == 2


def test_spans_far_apart_in_time_are_two_calls(otel: Otel, ledger: Spool, tracers: tuple[Tracer, Tracer]) -> None:
    now = time.time_ns()
    tracers[1].start_span("openai.chat", attributes=chat_span(), start_time=now).end(end_time=now + 10**6)
    later = now + 10**9  # a second after the first call ended
    tracers[0].start_span("ChatOpenAI", attributes=llm_span(), start_time=later).end(end_time=later + 10**6)
    assert billed(ledger) == (2, 200, 20)


def test_spans_of_one_library_never_pair(otel: Otel, ledger: Spool, tracers: tuple[Tracer, Tracer]) -> None:
    outer = tracers[1].start_span("openai.chat", attributes=chat_span())
    tracers[1].start_span("openai.chat", attributes=chat_span()).end()
    outer.end()
    assert billed(ledger) == (2, 200, 20)


def test_a_noted_call_pairs_once(otel: Otel, ledger: Spool, tracers: tuple[Tracer, Tracer]) -> None:
    # Three spans in flight at once: one client call and two framework spans (the second has no
    # client span of its own, its client was not instrumented). One pair, one call left over.
    outer = [tracers[0].start_span("ChatOpenAI", attributes=llm_span()) for _ in range(2)]
    tracers[1].start_span("openai.chat", attributes=chat_span()).end()
    for span in outer:
        span.end()
    assert billed(ledger) == (2, 200, 20)


# -- the table's bounds ---------------------------------------------------------------------------


def call(scope: str, at: int = 0, born: float | None = None) -> Call:
    noted = Call(scope, frozenset({"m"}), at, at + 1_000, None)
    if born is not None:
        noted.born = born
    return noted


@pytest.fixture
def small() -> Iterator[Pairs]:
    yield Pairs(max_calls=3, max_age=60.0, slack_ns=0)


def test_the_table_keeps_the_newest_calls_up_to_its_count(small: Pairs) -> None:
    for n in range(5):
        assert small.claim((n, 1, 0, 0), call("client"))
    assert len(small) == 3
    assert small.claim((0, 1, 0, 0), call("framework"))  # the oldest was forgotten: no twin left
    assert not small.claim((4, 1, 0, 0), call("framework"))  # a recent one still pairs, and is taken out
    assert len(small) == 2


def test_the_table_forgets_calls_older_than_its_age(small: Pairs) -> None:
    assert small.claim((1, 1, 0, 0), call("client", born=time.monotonic() - 61.0))
    assert small.claim((2, 1, 0, 0), call("client"))  # the sweep on insert drops the old one
    assert len(small) == 1
    assert small.claim((1, 1, 0, 0), call("framework"))


def test_identical_calls_beyond_the_per_usage_cap_forget_the_oldest() -> None:
    pairs = Pairs(max_calls=1_000, slack_ns=0)
    for n in range(70):
        assert pairs.claim((1, 1, 0, 0), call("client", at=n * 10_000))
    assert len(pairs) == 64
    assert pairs.claim((1, 1, 0, 0), call("framework", at=0))  # the first six went first
    assert not pairs.claim((1, 1, 0, 0), call("framework", at=69 * 10_000))
