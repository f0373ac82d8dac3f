"""Fuzzing the public API with hostile values (issue 11's acceptance).

Hot-path calls (`session(...)`, `track_agent`'d functions, `record_llm_call`, `record_tool_call`,
`log_outcome`, `end_session`) never raise into the host and never lose a session's valid calls;
what reaches the (local) Keito server is contract-valid and nothing is left `sending` after
`flush()`. `configure()` is the one boundary allowed to raise: only ValueError / TypeError, naming
the argument. The root conftest fails a test whenever the library's guard swallowed an internal
error, so "never raises" here also means "never needed the last-resort guard".
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

pytest.importorskip("hypothesis")

from hypothesis import given
from hypothesis import strategies as st

import keito_instrument as keito
from keito_instrument import _config
from tests._hostile import (
    VALID_MODELS,
    Checker,
    Unprintable,
    delivering,
    fuzz_settings,
    hostile_ids,
    hostile_metadata,
    hostile_numbers,
    hostile_scalars,
    hostile_text,
    hostile_values,
    model_names,
    token_counts,
    unique_id,
    unknown_kwargs,
)

TOKEN_ARGS = (
    "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens",
    "cache_write_5m_tokens", "cache_write_1h_tokens", "input_audio_tokens", "input_image_tokens",
    "output_audio_tokens", "web_searches",
)
SESSION_ARGS = ("project_id", "task_id", "expense_category_id", "agent_id", "agent_type", "framework", "notes")

# Keyword arguments of session() / track_agent(): each hostile or absent.
session_kwargs = st.fixed_dictionaries(
    {},
    optional={
        **{name: hostile_ids for name in SESSION_ARGS},
        "billable": st.one_of(st.booleans(), hostile_scalars),
        "metadata": hostile_metadata,
        "idle_timeout": st.one_of(hostile_numbers, hostile_scalars),
    },
)

# One record_llm_call: the model, the provider and any subset of the keyword arguments, hostile.
llm_call = st.fixed_dictionaries(
    {"model": model_names},
    optional={
        "provider": st.one_of(st.sampled_from(["openai", "anthropic", None]), hostile_scalars),
        **{name: token_counts for name in TOKEN_ARGS},
        "cached": st.one_of(st.booleans(), hostile_scalars),
        "usage_missing": st.one_of(st.booleans(), hostile_scalars),
        "call_id": st.one_of(st.none(), st.uuids().map(str), hostile_scalars),
    },
)

outcome = st.fixed_dictionaries(
    {"outcome_type": st.one_of(st.sampled_from(["ticket_resolved", "lead"]), hostile_scalars)},
    optional={
        "quantity": st.one_of(hostile_numbers, hostile_scalars),
        "unit_price": st.one_of(hostile_numbers, hostile_scalars),
        "success": st.one_of(st.booleans(), hostile_scalars),
        "description": st.one_of(hostile_text, hostile_scalars),
        "evidence": hostile_metadata,
        "metadata": hostile_metadata,
    },
)

# The things a session's body does, in order.
action = st.one_of(
    st.tuples(st.just("llm"), llm_call),
    st.tuples(st.just("tool"), st.one_of(st.none(), hostile_numbers, hostile_scalars)),
    st.tuples(st.just("outcome"), outcome),
)


def _is_valid_call(call: dict[str, Any]) -> bool:
    """A call every implementation must bill: a real model name and real (or no) token counts."""
    counts = [call.get(name, 0) for name in TOKEN_ARGS]
    return (
        call["model"] in VALID_MODELS
        and all(type(n) is int and 0 <= n <= 10**6 for n in counts)
        and call.get("call_id") is None
    )


def _act(step: tuple[str, Any], extra: dict[str, Any]) -> int:
    """Do one step inside the current session; how many valid calls it made."""
    kind, args = step
    if kind == "llm":
        result = keito.record_llm_call(**args, **extra)
        assert isinstance(result, bool)
        return int(_is_valid_call(args))
    if kind == "tool":
        session = keito.current_session()
        if session is not None:
            session.record_tool_call() if args is None else session.record_tool_call(args)
        return 0
    assert keito.log_outcome(**args, **extra) is None
    return 0


@pytest.fixture
def checker() -> Any:
    with delivering() as server:
        check = Checker(server)
        try:
            yield check
        finally:
            check.close()


@fuzz_settings(examples=30, slow_examples=300)
@given(options=session_kwargs, extra=unknown_kwargs, steps=st.lists(action, min_size=1, max_size=5),
       named=st.booleans())
def test_session_with_hostile_arguments_and_calls(
    checker: Checker, options: dict[str, Any], extra: dict[str, Any], steps: list[Any], named: bool
) -> None:
    checker.mark()
    session_id = unique_id() if named else None
    valid = 0
    with keito.session(session_id, **options, **extra) as s:
        for step in steps:
            valid += _act(step, {})
        sid = s.session_id
    if session_id is not None:
        assert sid == session_id
    checker.check({sid: valid})


@fuzz_settings(examples=25, slow_examples=200)
@given(session_id=st.one_of(hostile_scalars, hostile_text), calls=st.lists(llm_call, min_size=1, max_size=3),
       end=st.booleans())
def test_record_llm_call_to_a_hostile_session_id(
    checker: Checker, session_id: Any, calls: list[dict[str, Any]], end: bool
) -> None:
    """`session_id=` of record_llm_call / log_outcome / end_session: anything at all."""
    checker.mark()
    for call in calls:
        assert isinstance(keito.record_llm_call(**call, session_id=session_id), bool)
    keito.log_outcome("fuzzed", session_id=session_id)
    assert isinstance(keito.end_session(session_id), bool)
    if end:
        keito.shutdown(5.0)  # ends whatever is still open (a session_id that was dropped: nothing)
    checker.check()


@fuzz_settings(examples=25, slow_examples=200)
@given(options=session_kwargs, extra=unknown_kwargs, calls=st.lists(llm_call, min_size=1, max_size=3),
       form=st.sampled_from(["sync", "async", "gen", "agen"]), raises=st.booleans(),
       session_id=hostile_scalars, sid_mode=st.sampled_from(["fixed", "hostile", "callable"]))
def test_track_agent_with_hostile_settings(
    checker: Checker, options: dict[str, Any], extra: dict[str, Any], calls: list[dict[str, Any]], form: str,
    raises: bool, session_id: Any, sid_mode: str,
) -> None:
    """Decorating never raises and the function's own result and exception pass through unchanged."""
    checker.mark()
    seen: list[str] = []

    def body() -> int:
        session = keito.current_session()
        assert session is not None
        seen.append(session.session_id)
        for call in calls:
            keito.record_llm_call(**call)
        if raises:
            raise KeyError("the host's own error")
        return 42

    # A string id, the hostile value itself, or a callable of the function's arguments returning it.
    sid_arg: Any = {"fixed": unique_id(), "hostile": session_id, "callable": lambda *a, **k: session_id}[sid_mode]
    if form == "sync":
        fn: Any = keito.track_agent(session_id=sid_arg, **options, **extra)(body)
    elif form == "async":
        async def abody() -> int:
            return body()
        fn = keito.track_agent(session_id=sid_arg, **options, **extra)(abody)
    elif form == "gen":
        def gbody() -> Any:
            yield body()
        fn = keito.track_agent(session_id=sid_arg, **options, **extra)(gbody)
    else:
        async def agbody() -> Any:
            yield body()
        fn = keito.track_agent(session_id=sid_arg, **options, **extra)(agbody)

    async def drain_async_gen() -> list[Any]:
        return [item async for item in fn()]

    try:
        if form == "sync":
            result: Any = fn()
        elif form == "async":
            result = asyncio.run(fn())
        elif form == "gen":
            result = next(iter(fn()))
        else:
            result = asyncio.run(drain_async_gen())[0]
    except KeyError as exc:
        assert raises and exc.args == ("the host's own error",)
    else:
        assert not raises and result == 42
    assert len(seen) == 1
    valid = sum(_is_valid_call(call) for call in calls)
    checker.check({seen[0]: valid})


@fuzz_settings(examples=25, slow_examples=200)
@given(value=st.one_of(hostile_values, hostile_metadata, hostile_scalars))
def test_one_hostile_value_anywhere_keeps_the_rest_of_the_session(checker: Checker, value: Any) -> None:
    """The same value in every slot of one session; its one valid call is billed whatever happens."""
    checker.mark()
    sid = unique_id()
    with keito.session(sid, agent_id=value, notes=value, metadata={"v": value, "w": [value]}):
        keito.record_llm_call("gpt-4o-mini", "openai", input_tokens=10, output_tokens=2)
        keito.record_llm_call(value, value, input_tokens=value, output_tokens=value, call_id=value)
        keito.log_outcome("resolved", quantity=value, unit_price=value, description=value,
                          evidence={"e": value}, metadata={"m": value})
    checker.check({sid: 1})


# -- configure(): the one place that may raise ----------------------------------------------------
CONFIG_NAMES = (
    "api_key", "account_id", "base_url", "project_id", "task_id", "expense_category_id", "agent_id",
    "agent_type", "billable", "timezone", "disabled", "hours_increment", "rounding", "min_hours",
    "cost_multiplier", "currency", "exchange_rate", "cost_decimals", "expense_mode", "granularity",
    "price_overrides", "idle_timeout", "max_open_sessions", "max_open_runs", "max_run_age",
    "max_session_age", "capture_content", "metadata", "batch_size", "flush_interval", "max_concurrency",
    "request_timeout", "atexit_timeout", "ledger_retention_days",
)
# Settings whose accepted values change where or whether records go: checked for the boundary only.
NOT_BILLED_AFTER = {"api_key", "account_id", "base_url", "disabled", "project_id", "task_id",
                    "expense_category_id", "currency", "exchange_rate"}


def _names(message: str, name: str) -> bool:
    return name in message or name.replace("_", " ") in message


@fuzz_settings(examples=40, slow_examples=400)
@given(name=st.sampled_from(CONFIG_NAMES), value=st.one_of(hostile_values, hostile_metadata, hostile_numbers),
       extra=unknown_kwargs)
def test_configure_raises_only_value_or_type_errors_naming_the_argument(
    checker: Checker, name: str, value: Any, extra: dict[str, Any]
) -> None:
    saved = _config.saved_overrides()
    checker.mark()
    try:
        try:
            keito.configure(**{name: value})
        except (ValueError, TypeError) as exc:
            assert _names(str(exc), name), f"configure({name}=...) raised {exc!r}, not naming {name!r}"
        else:
            if name not in NOT_BILLED_AFTER and not extra:
                # Accepted: it must then be usable on the hot path.
                sid = unique_id()
                with keito.session(sid):
                    keito.record_llm_call("gpt-4o-mini", "openai", input_tokens=10, output_tokens=2)
                    keito.log_outcome("done")
                checker.check({sid: 1})
        if extra:
            with pytest.raises((ValueError, TypeError)) as info:
                keito.configure(**extra)
            assert any(_names(str(info.value), key) for key in extra), info.value
    finally:
        _config.restore_overrides(saved)


# -- plain examples: the bugs the fuzzing found ------------------------------------------------------
def test_unprintable_objects_everywhere_are_billed(checker: Checker) -> None:
    checker.mark()
    bad = Unprintable()
    with keito.session("unprintable", agent_id=bad, notes=bad, project_id=bad, metadata={bad: bad, "k": bad}):
        keito.record_llm_call(bad, bad, input_tokens=bad, call_id=bad)
        keito.record_llm_call("gpt-4o-mini", "openai", input_tokens=5, output_tokens=1)
        keito.log_outcome(bad, quantity=bad, description=bad, evidence=bad, metadata=bad)
    checker.check({"unprintable": 2})


def test_nan_and_huge_numbers_in_an_outcome_and_a_call(checker: Checker) -> None:
    checker.mark()
    with keito.session("numbers", idle_timeout=math.nan, billable="maybe"):
        keito.record_llm_call("gpt-4o-mini", input_tokens=2**63, output_tokens=math.inf, web_searches=-1)
        keito.log_outcome("lead", quantity=2**64, unit_price=math.nan, success="yes")
    checker.check({"numbers": 1})


def test_an_int_note_or_id_no_longer_wedges_billing(checker: Checker) -> None:
    """notes=5 used to fail in record building on every fold, so no later session was billed either."""
    checker.mark()
    with keito.session("int-notes", notes=5, project_id=7, agent_id=b"bot"):
        keito.record_llm_call("gpt-4o-mini", "openai", input_tokens=10, output_tokens=1)
    with keito.session("after"):
        keito.record_llm_call("gpt-4o-mini", "openai", input_tokens=10, output_tokens=1)
    checker.check({"int-notes": 1, "after": 1})
    entry = next(r for r in checker.server.time_entries if r["metadata"]["session_id"] == "int-notes")
    assert (entry["notes"], entry["project_id"], entry["metadata"]["agent_id"]) == ("5", "7", "bot")


def test_unknown_or_wrongly_typed_session_settings_are_dropped_not_raised(checker: Checker) -> None:
    checker.mark()
    with keito.session("odd-settings", foo=1, metadata=[1, 2], idle_timeout="soon"):  # type: ignore[arg-type]
        keito.record_llm_call("gpt-4o-mini", "openai", input_tokens=10, output_tokens=1)

    @keito.track_agent(bar=2, session_id=lambda: ["not", "an", "id"])  # type: ignore[call-overload]
    def agent() -> str:
        keito.record_llm_call("gpt-4o-mini", "openai", input_tokens=10, output_tokens=1)
        return "done"

    assert agent() == "done"
    checker.check({"odd-settings": 1, "['not', 'an', 'id']": 1})


def test_a_huge_tool_count_does_not_overflow_the_ledger(checker: Checker) -> None:
    """record_tool_call(2**70) used to fail in SQLite (OverflowError) on every fold."""
    checker.mark()
    with keito.session("tools") as s:
        s.record_tool_call(2**70)
        s.record_tool_call(-3)
        s.record_tool_call(2)
        keito.record_llm_call("gpt-4o-mini", "openai", input_tokens=10, output_tokens=1)
    checker.check({"tools": 1})
    assert next(r for r in checker.spool.sessions() if r["session_id"] == "tools")["tool_calls"] == 2


@pytest.mark.parametrize(("name", "value"), [
    ("ledger_retention_days", 1e300), ("cost_decimals", 40), ("cost_multiplier", math.inf),
    ("request_timeout", math.nan), ("batch_size", math.inf), ("project_id", Unprintable()),
])
def test_configure_refuses_values_that_broke_billing_later(name: str, value: Any) -> None:
    with pytest.raises(ValueError, match=name):
        keito.configure(**{name: value})


def test_configured_metadata_is_made_plain(checker: Checker) -> None:
    """configure(metadata=...) goes into every session: an object that cannot be encoded used to
    make every session fail to open."""
    checker.mark()
    keito.configure(metadata={"team": "a", "odd": Unprintable(), 3: {"deep": [1, {2}]}})
    with keito.session("plain-meta"):
        keito.record_llm_call("gpt-4o-mini", "openai", input_tokens=10, output_tokens=1)
    checker.check({"plain-meta": 1})
    entry = next(r for r in checker.server.time_entries if r["metadata"]["session_id"] == "plain-meta")
    assert entry["metadata"]["team"] == "a" and entry["metadata"]["odd"] == "<Unprintable>"
