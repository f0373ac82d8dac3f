"""The warm-up never leaves httpx2 half-imported where openai 2.x would find it."""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = """
import sys, threading
import openai  # noqa: F401
assert "httpx2" not in sys.modules
from keito_instrument import _pipeline
threading.Thread.start = lambda self: None  # the warm-up thread never runs: only the caller imports
_pipeline.warm_up()
# Imported on the caller's thread, before any thread of ours could: whole, usable by openai.
module = sys.modules["httpx2"]
assert hasattr(module, "Timeout") and hasattr(module, "AsyncClient")
print("ok")
"""


def test_with_openai_loaded_httpx2_is_imported_on_the_callers_thread_first() -> None:
    pytest.importorskip("openai")
    pytest.importorskip("httpx2")
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
