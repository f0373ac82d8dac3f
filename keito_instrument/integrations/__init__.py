"""Thin adapters, one module per framework; each imports its framework lazily.

`instrument_all()` enables every adapter whose framework can be imported.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging

from .._guard import guard

_log = logging.getLogger("keito_instrument")

# adapter module -> the import that proves its framework is installed (one line each, in the
# order `keito.instrument()` enables them)
ADAPTERS = {
    "langchain": "langchain_core",
    "crewai": "crewai",
    "openai_agents": "agents",
    "openai": "openai",
    "threading": "threading",
    "anthropic": "anthropic",
}


def instrument_all() -> list[str]:
    """Call `instrument()` of every adapter whose framework is installed."""
    enabled: list[str] = []
    for name, probe in ADAPTERS.items():
        if importlib.util.find_spec(probe) is None:
            continue
        with guard(f"instrument {name}"):
            module = importlib.import_module(f"{__name__}.{name}")
            module.instrument()
            enabled.append(name)
    return enabled


def missing_extra(framework: str, extra: str) -> ImportError:
    """The ImportError raised when an adapter's framework is not installed."""
    return ImportError(
        f"keito-instrument's {framework} integration needs {framework}: "
        f'pip install "keito-instrument[{extra}]"'
    )
