"""Testing kit for keito-instrument users: a Keito-compatible server on 127.0.0.1 and pytest fixtures.

    from keito_instrument.testing import KeitoTestServer

    with KeitoTestServer() as server:
        keito.configure(api_key=server.api_key, account_id=server.account_id, base_url=server.url)

With pytest, the `keito_server` fixture (this package's pytest plugin) does that for you.
The server module loads on first use, so the pytest plugin costs nothing at startup.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._server import Fault, KeitoTestServer, LoggedRequest

__all__ = ["Fault", "KeitoTestServer", "LoggedRequest"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import _server

        return getattr(_server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
