"""Testing kit for keito-instrument users: a Keito-compatible server on 127.0.0.1 and pytest fixtures.

    from keito_instrument.testing import use_test_server

    with use_test_server() as server:   # a KeitoTestServer, its credentials and a temporary ledger
        ...                             # your instrumented code; then assert on server.expenses

With pytest, the `keito_server` fixture (this package's pytest plugin) does that for you. Either
way the test's records go to a temporary ledger, never the user's real one, and the previous
settings are restored afterwards. The server module loads on first use, so the pytest plugin
costs nothing at startup.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._isolation import use_test_server
    from ._server import Fault, KeitoTestServer, LoggedRequest

__all__ = ["Fault", "KeitoTestServer", "LoggedRequest", "use_test_server"]


def __getattr__(name: str) -> Any:
    if name == "use_test_server":
        from ._isolation import use_test_server

        return use_test_server
    if name in __all__:
        from . import _server

        return getattr(_server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
