"""Fixtures of the OpenAI client tests: a local fake OpenAI API and a clean instrumentation state.

Real `openai` clients (sync and async) are pointed at `_fake_server` on 127.0.0.1; the root
conftest refuses any connection beyond loopback.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from _fake_server import FakeOpenAI, fake_openai

pytest.importorskip("openai")


from keito_instrument.integrations import openai as keito_openai


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    """A fresh fake OpenAI API for the test."""
    with fake_openai() as fake:
        yield fake


@pytest.fixture(autouse=True)
def _clean_instrumentation() -> Iterator[None]:
    """No instrumentation leaks from one test into the next."""
    keito_openai.uninstrument()
    yield
    keito_openai.uninstrument()


@pytest.fixture
def instrumented() -> Iterator[None]:
    """The OpenAI client instrumented for the test."""
    keito_openai.instrument()
    yield
    keito_openai.uninstrument()

