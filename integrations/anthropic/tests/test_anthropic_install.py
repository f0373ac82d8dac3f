"""Installing the hook: reversible, lazy, versioned, discovered by `keito.instrument()`, never
raising into the host, and counting a call once when another layer sees it too."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import anthropic
import pytest
from _fake_anthropic import FakeAnthropic
from anthropic.lib.streaming import AsyncMessageStreamManager, MessageStreamManager
from anthropic.resources.messages.messages import AsyncMessages, Messages

import keito_instrument as keito
from conftest import ask, billed
from keito_instrument._spool import Spool
from keito_instrument.integrations import ADAPTERS, _kernel, instrument_all
from keito_instrument.integrations import anthropic as keito_anthropic
from keito_instrument.integrations.anthropic import _patch

ROOT = Path(__file__).resolve().parents[3]
PATCHED = [(cls, name) for cls, name in [
    (Messages, "create"), (Messages, "parse"), (AsyncMessages, "create"), (AsyncMessages, "parse"),
    (MessageStreamManager, "__enter__"), (MessageStreamManager, "__exit__"),
    (AsyncMessageStreamManager, "__aenter__"), (AsyncMessageStreamManager, "__aexit__"),
] if name in vars(cls)]  # (parse came after the oldest supported SDK)


def test_uninstrument_puts_the_sdks_own_methods_back(client: anthropic.Anthropic, ledger: Spool) -> None:
    assert keito_anthropic.is_instrumented()
    wrapped = {target: vars(target[0])[target[1]] for target in PATCHED}
    assert all(getattr(w, "__keito_wrapped__", False) for w in wrapped.values())
    keito_anthropic.uninstrument()
    keito_anthropic.uninstrument()  # (twice is fine)
    assert not keito_anthropic.is_instrumented()
    for (cls, name), wrapper in wrapped.items():
        assert vars(cls)[name] is wrapper.__wrapped__ and not hasattr(vars(cls)[name], "__keito_wrapped__")
    with keito.session(session_id="off"):
        client.messages.create(**ask())
        list(client.messages.create(**ask(stream=True)))
    keito_anthropic.instrument()
    keito_anthropic.instrument()  # (installs once)
    assert vars(Messages)["create"].__wrapped__ is wrapped[(Messages, "create")].__wrapped__
    assert keito.flush(5.0)
    [row] = ledger.sessions()
    assert row["llm_calls"] == 0


def test_a_wrapper_someone_wrapped_since_is_switched_off(client: anthropic.Anthropic, ledger: Spool,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    ours = vars(Messages)["create"]

    def theirs(self: Messages, **kwargs: object) -> object:  # another library's wrapper, over ours
        return ours(self, **kwargs)

    monkeypatch.setattr(Messages, "create", theirs)
    keito_anthropic.uninstrument()
    with keito.session(session_id="buried"):
        assert client.messages.create(**ask()).type == "message"
    assert keito.flush(5.0)
    assert ledger.sessions()[0]["llm_calls"] == 0


def test_the_sdk_is_imported_only_by_instrument() -> None:
    code = ("import sys, keito_instrument.integrations.anthropic as k; assert 'anthropic' not in sys.modules; "
            "k.instrument(); assert 'anthropic' in sys.modules and k.is_instrumented()")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)


def test_a_missing_or_old_sdk_names_the_install_line(monkeypatch: pytest.MonkeyPatch) -> None:
    keito_anthropic.uninstrument()
    real = metadata.version
    monkeypatch.setattr(metadata, "version", lambda name: "0.48.2" if name == "anthropic" else real(name))
    with pytest.raises(ImportError, match=r'anthropic >= 0\.49, found 0\.48\.2: pip install -U "keito-instrument'):
        keito_anthropic.instrument()

    def missing(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", missing)
    with pytest.raises(ImportError, match=r'pip install "keito-instrument\[anthropic\]"'):
        keito_anthropic.instrument()
    assert not keito_anthropic.is_instrumented()


def test_keito_instrument_discovers_the_integration(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ADAPTERS["anthropic"] == "anthropic"
    keito_anthropic.uninstrument()
    monkeypatch.setattr("keito_instrument.integrations.ADAPTERS", {"anthropic": "anthropic"})
    assert instrument_all() == ["anthropic"] and keito_anthropic.is_instrumented()


@pytest.mark.guard_errors_expected
def test_an_internal_fault_never_reaches_the_host(client: anthropic.Anthropic, monkeypatch: pytest.MonkeyPatch,
                                                  _guard_failures: list[tuple[str, BaseException]]) -> None:
    def broken(*args: object, **kwargs: object) -> bool:
        raise RuntimeError("injected")

    monkeypatch.setattr(_kernel, "record_provider_call", broken)
    monkeypatch.setattr("keito_instrument.integrations.anthropic._stream.StreamCall.see", broken)
    assert client.messages.create(**ask()).content[0].text == "Hello, world!"  # type: ignore[union-attr]
    assert [e.type for e in client.messages.create(**ask(stream=True))][-1] == "message_stop"
    with client.messages.stream(**ask()) as stream:
        assert stream.get_final_text() == "Hello, world!"
    assert {kind for kind, _ in _guard_failures} == {"anthropic messages call", "anthropic stream event",
                                                    "anthropic stream end"}


# -- counted once across layers (issue 12, item 4) -----------------------------------------------
def test_a_call_an_outer_framework_records_is_left_to_it(client: anthropic.Anthropic, server: FakeAnthropic,
                                                         ledger: Spool) -> None:
    # What a framework adapter (LangChain's handler over langchain-anthropic) does: it marks the
    # context while the model call runs, then records the call itself from the response.
    with keito.session(session_id="framework"):
        with _kernel.framework_call("langchain"):
            message = client.messages.create(**ask())
            list(client.messages.create(**ask(stream=True)))
            with client.messages.stream(**ask()) as stream:
                stream.until_done()
        assert _kernel.record_provider_call(message.model, "anthropic", message.usage, flavor="anthropic",
                                            response_id=message.id)
    assert keito.flush(5.0)
    one_call = {kind: count // 3 for kind, count in server.totals().items()}  # 3 calls alike, 1 billed
    assert server.totals()["calls"] == 3 and billed(ledger) == one_call


async def test_two_layers_seeing_one_response_bill_it_once(aclient: anthropic.AsyncAnthropic,
                                                           server: FakeAnthropic, ledger: Spool) -> None:
    with keito.session(session_id="layers"):
        message = await aclient.messages.create(**ask())  # our client hook counts it...
        # ...and an outer layer (an OTel span of the call, a framework handler) sees the same response
        assert not _kernel.record_provider_call(message.model, "anthropic", message.usage.to_dict(),
                                                flavor="anthropic", response_id=message.id)
        async with aclient.messages.stream(**ask()) as stream:
            final = await stream.get_final_message()
        assert not _kernel.record_provider_call(final.model, "anthropic", final.usage, response_id=final.id)
    assert keito.flush(5.0)
    assert billed(ledger) == server.totals() and server.totals()["calls"] == 2


# The example runs under a guard that refuses (and counts) any connection or lookup beyond loopback.
GUARDED_RUN = """
import runpy, socket, sys
attempts, connect, getaddrinfo = [], socket.socket.connect, socket.getaddrinfo
def local(host):
    return host is None or str(host) in ("localhost", "::1") or str(host).startswith("127.")
def guarded_connect(self, address):
    if isinstance(address, tuple) and not local(address[0]):
        attempts.append(address)
        raise OSError("beyond loopback")
    return connect(self, address)
def guarded_getaddrinfo(host, *args, **kwargs):
    if not local(host):
        attempts.append(host)
        raise OSError("beyond loopback")
    return getaddrinfo(host, *args, **kwargs)
socket.socket.connect, socket.getaddrinfo = guarded_connect, guarded_getaddrinfo
runpy.run_path(sys.argv[1], run_name="__main__")
print("attempts beyond loopback:", len(attempts))
"""


def test_the_example_runs_offline(tmp_path: Path) -> None:
    ledger_path = tmp_path / "ledger.sqlite3"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KEITO_", "ANTHROPIC_"))}
    env["KEITO_LEDGER"] = str(ledger_path)
    result = subprocess.run([sys.executable, "-c", GUARDED_RUN, str(ROOT / "examples" / "anthropic_client.py")],
                            capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("Paris. / Paris.") == 2
    assert result.stdout.rstrip().endswith("attempts beyond loopback: 0"), result.stdout
    [row] = [line.split() for line in result.stdout.splitlines() if line.startswith("claude-sonnet-4-5")]
    assert row[1:8] == ["2", "4", "10,480", "8,000", "2,000", "2,000", "240"]  # sessions, calls, tokens by kind
    sessions = Spool(ledger_path).sessions()
    assert [(s["agent_id"], s["llm_calls"]) for s in sessions] == [("geo-bot", 2), ("geo-bot", 2)]


def test_every_target_this_sdk_has_is_patched() -> None:
    assert len(PATCHED) >= 6
    present = {(getattr(__import__(module, fromlist=[cls]), cls), name) for module, cls, name, _ in _patch.TARGETS
               if name in vars(getattr(__import__(module, fromlist=[cls]), cls, object))}  # (some are aliases)
    assert len(vars(keito_anthropic)["_switch"].handle) == len(present)
