"""Thin adapters, one subpackage per framework; each imports its framework lazily.

`instrument_all()` enables every adapter whose framework can be imported. The adapters are listed
once, as entry points of the group `keito_instrument_adapters` (pyproject.toml): the name is the
import that proves the framework is installed, the value the adapter module. So adding an adapter
touches its subpackage and pyproject.toml, and another package can register its own.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from typing import Any

from .._guard import guard

_log = logging.getLogger("keito_instrument")

GROUP = "keito_instrument_adapters"


def discover() -> dict[str, str]:
    """The registered adapters, `name -> probe`, sorted by name (the order does not matter).

    `name` is the subpackage name for ours (`"langchain"`), the full module path for another
    package's; `probe` is the import that proves its framework is installed.
    """
    from importlib.metadata import entry_points

    found: dict[str, str] = {}
    for point in sorted(entry_points(group=GROUP), key=lambda p: p.value):
        module = point.value.split(":", 1)[0].strip()
        short = module.removeprefix(f"{__name__}.")
        name = short if short != module and "." not in short else module
        found.setdefault(name, point.name)
    return found


def __getattr__(name: str) -> Any:
    # `ADAPTERS` is read from the installed metadata on first use, not at import (that scan
    # costs milliseconds every adapter import would pay).
    if name == "ADAPTERS":
        adapters = globals()["ADAPTERS"] = discover()
        return adapters
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def instrument_all() -> list[str]:
    """Call `instrument()` of every adapter whose framework is installed."""
    from . import ADAPTERS  # (through __getattr__ on first use)

    if not ADAPTERS:
        _log.warning("keito-instrument: no adapters registered (entry point group %s): is keito-instrument "
                     "installed, not only on sys.path? pip install keito-instrument", GROUP)
    enabled: list[str] = []
    for name, probe in ADAPTERS.items():
        if importlib.util.find_spec(probe) is None:
            continue
        with guard(f"instrument {name}"):
            try:
                module = importlib.import_module(_module_of(name))
                module.instrument()
            except ImportError as exc:  # a framework older than the adapter supports: say so
                _log.warning("keito-instrument: %s not instrumented: %s", name, exc)
                continue
            enabled.append(name)
    return enabled


def _module_of(name: str) -> str:
    """Ours are named by subpackage (`openai`), another package's adapter by its module path."""
    if "." not in name and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return f"{__name__}.{name}"
    return name


def missing_extra(framework: str, extra: str) -> ImportError:
    """The ImportError raised when an adapter's framework is not installed."""
    return ImportError(
        f"keito-instrument's {framework} integration needs {framework}: "
        f'pip install "keito-instrument[{extra}]"'
    )
