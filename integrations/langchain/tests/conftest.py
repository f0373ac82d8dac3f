"""Fixtures of the LangChain integration tests: a clean adapter state around every test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from langchain_core.globals import set_llm_cache

from keito_instrument.integrations import langchain as keito_lc


@pytest.fixture(autouse=True)
def _clean_adapter() -> Iterator[None]:
    """No instrumentation, no LLM cache and no tracked run leaks from one test into the next."""
    keito_lc.uninstrument()
    set_llm_cache(None)
    yield
    keito_lc.uninstrument()
    set_llm_cache(None)
    keito_lc._table.clear()
