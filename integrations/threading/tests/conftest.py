"""Fixtures of the threading integration tests: the integration on (or off) for one test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from keito_instrument.integrations import threading as keito_threading


@pytest.fixture
def instrumented() -> Iterator[None]:
    """The threading integration on for this test, off afterwards."""
    keito_threading.instrument()
    yield
    keito_threading.uninstrument()


@pytest.fixture
def uninstrumented() -> Iterator[None]:
    """The threading integration off for this test (as it is without `keito.instrument()`)."""
    was_on = keito_threading.is_instrumented()
    keito_threading.uninstrument()
    yield
    if was_on:
        keito_threading.instrument()
