"""Fixtures shared by the core tests (tests/) and the integration tests (integrations/*/tests)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

import keito_instrument as keito
from keito_instrument import _config, _guard, _pipeline
from keito_instrument._spool import Spool, get_spool

_LOOPBACK = {"127.0.0.1", "::1", "localhost"}


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test gets its own ledger, no credentials from the environment and fresh settings."""
    for var in [*_config.ENV_VARS.values(), "KEITO_API_URL"]:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KEITO_LEDGER", str(tmp_path / "ledger.sqlite3"))
    _config.reset_settings()
    yield
    _pipeline.registry.close_all("test teardown")
    keito.shutdown(timeout=5.0)
    _config.reset_settings()


@pytest.fixture(autouse=True)
def _guard_failures(request: pytest.FixtureRequest) -> Iterator[list[tuple[str, BaseException]]]:
    """Anything the never-into-the-host guard swallowed fails the test (unless it opted out)."""
    swallowed: list[tuple[str, BaseException]] = []

    def listener(kind: str, exc: BaseException) -> None:
        swallowed.append((kind, exc))

    _guard.add_swallow_listener(listener)
    yield swallowed
    _guard.remove_swallow_listener(listener)
    if swallowed and request.node.get_closest_marker("guard_errors_expected") is None:
        kind, exc = swallowed[0]
        raise AssertionError(
            f"keito-instrument swallowed {len(swallowed)} internal error(s); first in {kind}: {exc!r}"
        ) from exc


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """No connection beyond loopback, from anything under test."""
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex

    def allowed(address: object) -> bool:
        if isinstance(address, tuple) and address:
            host = str(address[0])
            return host in _LOOPBACK or host.startswith("127.")
        return isinstance(address, (str, bytes))  # AF_UNIX paths

    def connect(self: socket.socket, address: object) -> None:
        if not allowed(address):
            raise OSError(f"test tried to reach the network: {address!r}")
        real_connect(self, address)  # type: ignore[arg-type]

    def connect_ex(self: socket.socket, address: object) -> int:
        if not allowed(address):
            raise OSError(f"test tried to reach the network: {address!r}")
        return real_connect_ex(self, address)  # type: ignore[arg-type]

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)


@pytest.fixture
def ledger() -> Spool:
    """The spool / local ledger this test writes to."""
    return get_spool()
