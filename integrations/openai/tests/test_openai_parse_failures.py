"""A `.parse()` the API answered (and billed) but whose answer the SDK cannot parse is counted once.

The fake API answers structured output with `{"answer": 42}`; `Strict` wants a string, so
openai's `chat.completions.parse` / `responses.parse` raise pydantic's ValidationError after the
API billed the request. The call is counted with the usage the server reported, and the caller
gets the very exception the SDK raised.
"""

from __future__ import annotations

import sys
from typing import Any, ClassVar

import openai
import pydantic
import pytest
from _fake_server import FakeOpenAI
from _openai_support import async_client, client, one_session, served_totals

import keito_instrument as keito
from keito_instrument._spool import Spool
from keito_instrument.integrations import _kernel
from keito_instrument.integrations import openai as keito_openai

if not hasattr(openai.resources.chat.Completions, "parse"):  # (older openai: beta.chat.completions.parse)
    pytest.skip("these tests drive chat.completions.parse, which this openai has only under beta",
                allow_module_level=True)

HI: Any = [{"role": "user", "content": "hi"}]


class Strict(pydantic.BaseModel):
    """No match for the server's answer (42 is no `str` in strict mode); keeps what it raised."""

    model_config = pydantic.ConfigDict(strict=True)
    answer: str

    raised: ClassVar[list[pydantic.ValidationError]] = []

    @classmethod
    def model_validate_json(cls, *args: Any, **kwargs: Any) -> Any:  # (openai's parse calls this)
        try:
            return super().model_validate_json(*args, **kwargs)
        except pydantic.ValidationError as exc:
            cls.raised.append(exc)
            raise


class Answer(pydantic.BaseModel):
    answer: int


@pytest.fixture(autouse=True)
def _forget_raised() -> Any:
    yield
    Strict.raised.clear()


def chat_parse(sdk: Any, fmt: type) -> Any:
    return sdk.chat.completions.parse(model="gpt-4o-mini", messages=HI, response_format=fmt)


def responses_parse(sdk: Any, fmt: type) -> Any:
    return sdk.responses.parse(model="o4-mini", input="hi", text_format=fmt)


def assert_billed_as_served(ledger: Spool, server: FakeOpenAI, calls: int, errors: int) -> None:
    row = one_session(ledger)
    inp, out, cached, reasoning = served_totals(server)
    assert len(server.served) == calls
    assert (row["llm_calls"], row["input_tokens"], row["output_tokens"], row["errors"]) == (calls, inp, out, errors)
    usage = [dict(u) for u in ledger.usage()]
    assert sum(u["cache_read_tokens"] for u in usage) == cached
    assert sum(u["reasoning_tokens"] for u in usage) == reasoning


@pytest.mark.usefixtures("instrumented")
def test_a_parse_whose_answer_does_not_validate_is_counted_once(ledger: Spool, server: FakeOpenAI) -> None:
    c = client(server)
    with keito.session(session_id="parse-fails"):
        for parse in (chat_parse, responses_parse):
            with pytest.raises(pydantic.ValidationError) as caught:
                parse(c, Strict)
            assert caught.value is Strict.raised[-1]  # the SDK's own exception object
    assert_billed_as_served(ledger, server, calls=2, errors=2)
    assert len(server.requests) == 2  # nothing sent again


@pytest.mark.usefixtures("instrumented")
async def test_an_async_parse_whose_answer_does_not_validate_is_counted_once(
        ledger: Spool, server: FakeOpenAI) -> None:
    c = async_client(server)
    with keito.session(session_id="async-parse-fails"):
        for parse in (chat_parse, responses_parse):
            with pytest.raises(pydantic.ValidationError) as caught:
                await parse(c, Strict)
            assert caught.value is Strict.raised[-1]
    assert_billed_as_served(ledger, server, calls=2, errors=2)


def _failure(action: Any) -> tuple[type, Any]:
    with pytest.raises(Exception) as caught:
        action()
    return type(caught.value), caught.value.errors(include_url=False)


def test_a_failed_parse_raises_what_the_sdk_raises(server: FakeOpenAI) -> None:
    c = client(server)
    actions = [lambda: chat_parse(c, Strict), lambda: responses_parse(c, Strict)]
    bare = [_failure(action) for action in actions]
    keito_openai.instrument()
    with keito.session():
        hooked = [_failure(action) for action in actions]
    assert hooked == bare and {kind for kind, _ in bare} == {pydantic.ValidationError}


@pytest.mark.usefixtures("instrumented")
def test_a_parse_that_validates_is_counted_once(ledger: Spool, server: FakeOpenAI) -> None:
    c = client(server)
    with keito.session():
        chat = chat_parse(c, Answer)
        response = responses_parse(c, Answer)
    assert chat.choices[0].message.parsed == response.output_parsed == Answer(answer=42)
    assert_billed_as_served(ledger, server, calls=2, errors=0)


@pytest.mark.usefixtures("instrumented")
async def test_a_raw_parse_whose_answer_does_not_validate_is_counted_once(ledger: Spool, server: FakeOpenAI) -> None:
    c, ac = client(server), async_client(server)
    with keito.session():
        raws = [c.chat.completions.with_raw_response.parse(model="gpt-4o-mini", messages=HI, response_format=Strict),
                c.responses.with_raw_response.parse(model="o4-mini", input="hi", text_format=Strict),
                await ac.chat.completions.with_raw_response.parse(model="gpt-4o-mini", messages=HI,
                                                                  response_format=Strict)]
        for raw in raws:
            with pytest.raises(pydantic.ValidationError) as caught:
                raw.parse()  # (the caller's own parse raises, as without us)
            assert caught.value is Strict.raised[-1]
    assert_billed_as_served(ledger, server, calls=3, errors=0)  # (the calls returned; the caller's parse raised)


@pytest.mark.usefixtures("instrumented")
def test_a_content_filtered_parse_is_counted_once(ledger: Spool, server: FakeOpenAI) -> None:
    server.finish_reason = "content_filter"
    with keito.session(), pytest.raises(openai.ContentFilterFinishReasonError):
        chat_parse(client(server), Answer)
    assert_billed_as_served(ledger, server, calls=1, errors=1)


def test_finding_the_answer_keeps_nothing_of_the_traceback(server: FakeOpenAI) -> None:
    with pytest.raises(pydantic.ValidationError) as caught:
        chat_parse(client(server), Strict)
    tb = caught.value.__traceback__
    before = sys.getrefcount(tb), sys.getrefcount(caught.value)
    found = _kernel.held_where_raised(caught.value, "openai.", (openai.types.chat.ChatCompletion,))
    assert type(found) is openai.types.chat.ChatCompletion and found.usage is not None
    assert (sys.getrefcount(tb), sys.getrefcount(caught.value)) == before
