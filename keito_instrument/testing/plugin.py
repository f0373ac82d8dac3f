"""pytest plugin (registered through the `pytest11` entry point): fixtures of the testing kit.

Importing it is cheap and safe: keito_instrument is only imported when a fixture is used.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from ._server import KeitoTestServer


@pytest.fixture
def keito_server(tmp_path: Path) -> Iterator[KeitoTestServer]:
    """A running `KeitoTestServer`, with keito_instrument configured to deliver to it from a
    temporary ledger (`tmp_path / "keito-ledger" / "ledger.sqlite3"`), never the real one.

    The credentials, base URL and ledger point at the test's own; project, task and expense
    category ids are set to the server's test ids unless already configured. On teardown open
    sessions are ended, the exporter is shut down (with a short budget), the previous settings
    are restored and the server stops.
    """
    from ._isolation import use_test_server

    ledger_dir = tmp_path / "keito-ledger"
    ledger_dir.mkdir(exist_ok=True)
    with use_test_server(ledger_dir=ledger_dir) as server:
        yield server
