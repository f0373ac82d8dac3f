"""A separate process for the crash and multi-process tests: `python _child.py MODE URL LEDGER [N]`.

MODE produce: end N sessions, then deliver (the parent kills it with SIGKILL meanwhile).
MODE finish:  deliver whatever the ledger holds, print the spool counts as JSON.
MODE exit:    end N sessions and exit without flushing: the atexit drain delivers them.
"""

from __future__ import annotations

import json
import sys

import keito_instrument as keito
from keito_instrument._spool import get_spool
from keito_instrument.testing import KeitoTestServer


def main() -> int:
    mode, url, ledger = sys.argv[1:4]
    defaults = KeitoTestServer()  # only for its default credentials and ids; never started
    keito.configure(
        api_key=defaults.api_key,
        account_id=defaults.account_id,
        base_url=url,
        ledger_path=ledger,
        project_id=defaults.project_id,
        task_id=defaults.task_id,
        expense_category_id=defaults.expense_category_id,
        batch_size=25,
    )
    if mode == "exit":
        keito.configure(atexit_timeout=3.0)
        for _ in range(int(sys.argv[4])):
            with keito.session():
                keito.record_llm_call("gpt-4o", "openai", input_tokens=1000, output_tokens=100)
        return 0
    if mode == "produce":
        for _ in range(int(sys.argv[4])):
            with keito.session():
                keito.record_llm_call("gpt-4o", "openai", input_tokens=1000, output_tokens=100)
        keito.flush(60.0)
        return 0
    ok = keito.flush(60.0)
    print(json.dumps(get_spool().counts()))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
