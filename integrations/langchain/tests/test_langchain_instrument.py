"""instrument(): every run tracked with no callbacks argument; never registered twice; env switch."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from _lc_fakes import UsageChatModel, reply
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.tracers import context as lc_context

import keito_instrument as keito
from keito_instrument._spool import Spool
from keito_instrument.integrations import langchain as keito_lc
from keito_instrument.integrations.langchain import KeitoCallbackHandler

PROMPT = ChatPromptTemplate.from_messages([("human", "{q}")])
REPO = Path(__file__).resolve().parents[3]


def our_hooks() -> int:
    return sum(1 for entry in lc_context._configure_hooks if isinstance(entry[0].get(), KeitoCallbackHandler))


def test_instrument_tracks_runs_without_callbacks(ledger: Spool) -> None:
    handler = keito_lc.instrument(project_id="p-auto")
    assert handler is not None and keito_lc.is_instrumented()
    (PROMPT | UsageChatModel(replies=[reply(inp=12, out=3)])).invoke({"q": "x"})
    [row] = ledger.sessions()
    assert (row["llm_calls"], row["input_tokens"], row["project_id"]) == (1, 12, "p-auto")


def test_instrument_never_registers_twice(ledger: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    from keito_instrument import integrations

    monkeypatch.setattr(
        integrations, "ADAPTERS", {"langchain": "langchain_core"}
    )  # this test's framework only
    first = keito_lc.instrument()
    assert keito.instrument() == ["langchain"]
    assert keito.instrument() == ["langchain"]
    second = keito_lc.instrument()
    assert first is second and our_hooks() == 1
    (PROMPT | UsageChatModel(replies=[reply(inp=12, out=3)])).invoke({"q": "x"})
    [row] = ledger.sessions()
    assert row["llm_calls"] == 1


def test_explicit_handler_and_instrument_bill_once(ledger: Spool) -> None:
    keito_lc.instrument(project_id="p-auto")
    explicit = KeitoCallbackHandler(project_id="p-explicit")
    (PROMPT | UsageChatModel(replies=[reply(inp=12, out=3)])).invoke(
        {"q": "x"}, config={"callbacks": [explicit]}
    )
    [row] = ledger.sessions()
    assert (row["llm_calls"], row["input_tokens"], row["project_id"]) == (1, 12, "p-explicit")


def test_uninstrument_stops_tracking(ledger: Spool) -> None:
    keito_lc.instrument()
    keito_lc.uninstrument()
    assert not keito_lc.is_instrumented() and our_hooks() == 0
    (PROMPT | UsageChatModel(replies=[reply()])).invoke({"q": "x"})
    assert ledger.sessions() == []
    keito_lc.instrument()
    assert our_hooks() == 1


async def test_instrument_in_async_tasks(ledger: Spool) -> None:
    import asyncio

    keito_lc.instrument()
    chain = PROMPT | UsageChatModel(replies=[reply(inp=4, out=1)])
    await asyncio.gather(*(chain.ainvoke({"q": str(i)}) for i in range(10)))
    rows = ledger.sessions()
    assert len(rows) == 10 and all(r["llm_calls"] == 1 for r in rows)


def test_instrument_again_replaces_the_settings_of_the_same_handler(ledger: Spool) -> None:
    first = keito_lc.instrument(project_id="p-old", task_id="t-old")
    second = keito_lc.instrument(project_id="p-new")
    assert first is second and our_hooks() == 1
    assert second is not None and second.session_settings == {"project_id": "p-new"}
    assert keito_lc.instrument() is first and first.session_settings == {"project_id": "p-new"}  # none: kept
    (PROMPT | UsageChatModel(replies=[reply(inp=12, out=3)])).invoke({"q": "x"})
    [row] = ledger.sessions()
    assert (row["project_id"], row["task_id"]) == ("p-new", None)


def test_instrument_rejects_a_mistyped_option_and_keeps_the_settings() -> None:
    with pytest.raises(TypeError, match="projet_id"):
        keito_lc.instrument(projet_id="p1")
    assert not keito_lc.is_instrumented() and our_hooks() == 0
    handler = keito_lc.instrument(project_id="p1")
    with pytest.raises(TypeError, match=r"'projet_id'.*'project_id'"):
        keito_lc.instrument(projet_id="p2")
    assert handler is not None and handler.session_settings == {"project_id": "p1"}
    assert keito_lc.is_instrumented() and our_hooks() == 1


def test_uninstrument_then_instrument_brings_back_the_same_handler() -> None:
    first = keito_lc.instrument(project_id="p1")
    keito_lc.uninstrument()
    assert first is not None and not first.active and not keito_lc.is_instrumented()
    keito_lc.uninstrument()  # already off: nothing to do
    again = keito_lc.instrument()
    assert again is first and again.active and keito_lc.is_instrumented() and our_hooks() == 1
    assert again.session_settings == {"project_id": "p1"}


def test_is_instrumented_is_false_while_the_handler_is_switched_off() -> None:
    handler = keito_lc.instrument()
    assert handler is not None and keito_lc.is_instrumented()
    handler.active = False  # (a public attribute)
    assert not keito_lc.is_instrumented()
    keito_lc.instrument()  # instrument() switches it back on
    assert handler.active and keito_lc.is_instrumented()


def test_env_switch_off_makes_instrument_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(keito_lc.ENV_VAR, "false")
    assert keito_lc.instrument() is None
    assert keito_lc.instrument(project_id="p1") is None
    assert our_hooks() == 0 and not keito_lc.is_instrumented()


def run_python(code: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "KEITO_LEDGER": str(tmp_path / "ledger.sqlite3"), **env}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_env_var_instruments_on_import(tmp_path: Path) -> None:
    code = """
        import sys
        sys.path.insert(0, "integrations/langchain/tests")
        import keito_instrument.integrations.langchain as lc
        from _lc_fakes import UsageChatModel, reply
        from keito_instrument._spool import get_spool
        UsageChatModel(replies=[reply(inp=7, out=2)]).invoke("x")
        import keito_instrument as keito
        keito.shutdown(1.0)
        rows = get_spool().sessions()
        print(lc.is_instrumented(), len(rows), rows[0]["input_tokens"])
    """
    done = run_python(code, tmp_path, KEITO_LANGCHAIN_INSTRUMENT="true")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "1", "7"]


def test_importing_the_core_does_not_load_langchain(tmp_path: Path) -> None:
    done = run_python(
        "import sys, keito_instrument, keito_instrument.adapters; "
        "print(any(m.startswith('langchain') for m in sys.modules))",
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_missing_langchain_names_the_extra(tmp_path: Path) -> None:
    code = """
        import sys

        class NoLangChain:
            def find_spec(self, name, path=None, target=None):
                if name == "langchain_core" or name.startswith("langchain_core."):
                    raise ModuleNotFoundError(f"No module named {name!r}")
                return None

        sys.meta_path.insert(0, NoLangChain())
        try:
            import keito_instrument.integrations.langchain
        except ImportError as exc:
            print(exc)
    """
    done = run_python(code, tmp_path)
    assert done.returncode == 0, done.stderr
    assert 'pip install "keito-instrument[langchain]"' in done.stdout


def test_a_too_old_langchain_core_is_named_with_the_upgrade_line(tmp_path: Path) -> None:
    code = """
        from importlib import metadata

        real = metadata.version
        metadata.version = lambda name: "0.3.10" if name == "langchain-core" else real(name)
        try:
            import keito_instrument.integrations.langchain
        except ImportError as exc:
            print(exc)
    """
    done = run_python(code, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "needs langchain-core >= 0.3.49, found 0.3.10" in done.stdout
    assert 'pip install -U "keito-instrument[langchain]"' in done.stdout


def test_keito_instrument_warns_about_a_too_old_framework_and_goes_on(monkeypatch: pytest.MonkeyPatch,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    from keito_instrument import integrations

    def too_old(**_: object) -> None:
        raise ImportError("keito-instrument's LangChain integration needs langchain-core >= 0.3.49, found 0.3.10")

    monkeypatch.setattr(keito_lc, "instrument", too_old)
    monkeypatch.setattr(integrations, "ADAPTERS", {"langchain": "langchain_core", "threading": "threading"})
    assert keito.instrument() == ["threading"]
    assert "langchain not instrumented" in caplog.text and "found 0.3.10" in caplog.text
    from keito_instrument.integrations import threading as keito_threading

    keito_threading.uninstrument()
