"""pytest plugin (registered through the `pytest11` entry point): fixtures of the testing kit.

Importing it is cheap and safe: keito_instrument is only imported when a fixture is used.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from ._server import KeitoTestServer


@pytest.fixture
def keito_server() -> Iterator[KeitoTestServer]:
    """A running `KeitoTestServer`, with keito_instrument configured to deliver to it.

    The credentials and base URL point at the server; project, task and expense category ids
    are set to the server's test ids unless already configured. On teardown the exporter is
    shut down (with a short budget), the previous settings are restored and the server stops.
    """
    from .. import _config, configure
    from .._export import shutdown
    from ._server import KeitoTestServer

    with _config._lock:
        before = dict(_config._overrides)
    with KeitoTestServer() as server:
        current = _config.get_settings()
        defaults = {
            "project_id": server.project_id,
            "task_id": server.task_id,
            "expense_category_id": server.expense_category_id,
        }
        configure(
            api_key=server.api_key,
            account_id=server.account_id,
            base_url=server.url,
            **{name: value for name, value in defaults.items() if getattr(current, name) is None},
        )
        try:
            yield server
        finally:
            shutdown(1.0)
            with _config._lock:
                _config._overrides.clear()
                _config._overrides.update(before)
            configure()
