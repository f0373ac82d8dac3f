"""instrument() / uninstrument(): alongside or instead of the SDK's exporter, options, version floor."""

from __future__ import annotations

from collections.abc import Iterator

import agents
import pytest
from agents.tracing import get_trace_provider

from conftest import Recorder
from keito_instrument.integrations import openai_agents as keito_agents
from keito_instrument.integrations.openai_agents._processor import KeitoTracingProcessor


def registered() -> list[object]:
    return list(get_trace_provider()._multi_processor._processors)  # type: ignore[attr-defined]


@pytest.fixture
def exporter() -> Iterator[Recorder]:
    """A stand-in for the SDK's exporter, registered first as the SDK's default is."""
    stand_in = Recorder()
    agents.set_trace_processors([stand_in])
    try:
        yield stand_in
    finally:
        keito_agents.uninstrument()
        agents.set_trace_processors([])


def test_instrument_adds_the_processor_beside_the_exporter_once(exporter: Recorder) -> None:
    processor = keito_agents.instrument()
    assert keito_agents.instrument() is processor and keito_agents.is_instrumented()
    assert isinstance(processor, KeitoTracingProcessor)
    assert registered() == [exporter, processor]
    keito_agents.uninstrument()
    assert registered() == [exporter] and not keito_agents.is_instrumented()


def test_replace_exporter_replaces_it_and_uninstrument_puts_it_back(exporter: Recorder) -> None:
    processor = keito_agents.instrument(replace_exporter=True)
    assert registered() == [processor]
    keito_agents.uninstrument()
    assert registered() == [exporter]


def test_replace_exporter_on_a_processor_already_added(exporter: Recorder) -> None:
    processor = keito_agents.instrument()
    assert keito_agents.instrument(replace_exporter=True) is processor
    assert registered() == [processor]
    keito_agents.uninstrument()
    assert registered() == [exporter]


def test_an_uninstrumented_processor_still_registered_does_nothing(exporter: Recorder) -> None:
    processor = keito_agents.instrument()
    keito_agents.uninstrument()
    agents.add_trace_processor(processor)  # as a custom provider that cannot remove it would keep it
    with agents.trace("after uninstrument"), agents.custom_span("work"):
        pass
    assert processor.open_traces == 0 and processor.open_spans == 0


def test_a_typo_in_an_option_raises_naming_it() -> None:
    with pytest.raises(TypeError, match=r"'projet_id'.*did you mean 'project_id'"):
        keito_agents.instrument(projet_id="p-1")
    with pytest.raises(TypeError, match="'session_id'"):
        KeitoTracingProcessor(session_id="s")  # a trace names its own session
    assert not keito_agents.is_instrumented()


def test_settings_given_again_replace_the_session_settings(exporter: Recorder) -> None:
    processor = keito_agents.instrument(project_id="p-1")
    keito_agents.instrument(project_id="p-2", max_traces=5)
    assert processor._options["project_id"] == "p-2"


def test_an_sdk_older_than_the_floor_gets_the_install_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keito_agents, "MIN_VERSION", (99, 0))
    wanted = r'openai-agents >= 99\.0, found .*: pip install -U "keito-instrument\[openai-agents\]"'
    with pytest.raises(ImportError, match=wanted):
        keito_agents.instrument()
    assert not keito_agents.is_instrumented()
