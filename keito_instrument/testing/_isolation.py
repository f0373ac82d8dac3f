"""Point keito-instrument at a `KeitoTestServer` and a temporary ledger, then put everything back.

Used by the `keito_server` pytest fixture and by `use_test_server()`: a test's sessions must never
land in the user's real ledger (where `keito-instrument report` would show them as billing).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._server import KeitoTestServer


@contextlib.contextmanager
def use_test_server(
    server: KeitoTestServer | None = None, *, ledger_dir: str | Path | None = None, shutdown_timeout: float = 2.0
) -> Iterator[KeitoTestServer]:
    """Deliver to `server` (a new, started `KeitoTestServer` when None) from a temporary ledger.

        with use_test_server() as server:
            with keito.session(agent_id="bot"):
                keito.record_llm_call("gpt-4o", "openai", input_tokens=10, output_tokens=1)
            assert keito.flush(5.0) and len(server.expenses) == 1

    For the duration: the credentials and base URL are the server's, the ledger is
    `ledger.sqlite3` in `ledger_dir` (a new temporary directory, removed afterwards, when None),
    and project, task and expense category ids are the server's test ids unless already configured.
    On exit, open sessions are ended and delivered (within `shutdown_timeout`), the exporter is
    stopped, your previous `configure()` arguments are restored and a server started here stops.
    """
    from .. import _config
    from .. import shutdown as keito_shutdown
    from ._server import KeitoTestServer

    saved = _config.saved_overrides()
    own_dir = None if ledger_dir is not None else tempfile.mkdtemp(prefix="keito-test-ledger-")
    ledger = Path(ledger_dir if ledger_dir is not None else str(own_dir)) / "ledger.sqlite3"
    started = server is None
    active = (server or KeitoTestServer()).start()
    try:
        current = _config.get_settings()
        ids = {"project_id": active.project_id, "task_id": active.task_id,
               "expense_category_id": active.expense_category_id}
        _config.configure(api_key=active.api_key, account_id=active.account_id, base_url=active.url,
                          ledger_path=str(ledger),
                          **{name: value for name, value in ids.items() if getattr(current, name) is None})
        yield active
    finally:
        try:
            keito_shutdown(shutdown_timeout)  # the test's sessions end in the temporary ledger
        finally:
            _config.restore_overrides(saved)
            if started:
                active.stop()
            if own_dir is not None:
                shutil.rmtree(own_dir, ignore_errors=True)
