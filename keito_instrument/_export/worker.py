"""The exporter: one daemon thread owning an asyncio loop and an httpx.AsyncClient.

Threading contract: `notify()`, `wake()` and `settings_changed()` run on the caller's thread and
never block (a flag and at most one `call_soon_threadsafe`). Everything else runs on the
exporter's own thread. A delivery cycle: claim a batch, reconcile the ambiguous records of each
(day, project, path) with one listing, POST the rest with bounded concurrency, store results
(cycle.py; this module owns the thread, its event loop and the loop between cycles).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import time
from typing import Any

import httpx

from .._config import get_settings
from .._guard import report
from .._spool import Spool
from .client import post
from .cycle import DeliveryCycle
from .policy import Outcome
from .queue import Queue, new_owner


def _suppress_otel() -> bool:
    """Attach a context that tells OpenTelemetry instrumentations to skip our own HTTP calls.

    Only when OpenTelemetry is imported by the host (we never import it ourselves); called before
    every delivery cycle, so an OpenTelemetry imported after the exporter started is honoured too.
    It runs inside the exporter's main task: the context is that task's copy (inherited by the
    cycle tasks it creates), never the host's, and it ends with the task (no detach needed).
    """
    ctx = sys.modules.get("opentelemetry.context")
    key = getattr(ctx, "_SUPPRESS_INSTRUMENTATION_KEY", None)
    if ctx is None or key is None:
        return False
    ctx.attach(ctx.set_value(key, True))
    return True


class Exporter(DeliveryCycle):
    """Delivers pending spool records to Keito from a background thread (see the module docstring)."""

    def __init__(self) -> None:
        self.owner = new_owner()
        self.generation = 0
        self.paused_until = 0.0
        self._not_before = 0.0
        self._stopping = False
        self._notified = 0
        self._recheck = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Future[tuple[bool, float | None]] | None = None
        self._tails: set[asyncio.Future[None]] = set()
        self._sem = asyncio.Semaphore(1)
        self._progress = threading.Condition()
        self._client: httpx.AsyncClient | None = None
        self._client_key: tuple[Any, ...] | None = None
        self._spools: dict[str, Spool] = {}
        self._warned: set[str] = set()
        self._verified = False
        self._unreachable = 0
        self._request_timeout = 0.0
        self._probe = asyncio.Lock()

    # -- caller's thread ------------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        """True while the thread runs and no stop was asked for."""
        return not self._stopping and self._thread is not None and self._thread.is_alive()

    @property
    def paused(self) -> bool:
        """True while delivery waits after Keito refused the key (401/403)."""
        return time.time() < self.paused_until

    def start(self) -> None:
        """Start the daemon thread (once)."""
        self._thread = threading.Thread(target=self._run, name="keito-instrument-exporter", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Run a delivery cycle now. Non-blocking."""
        loop, event = self._loop, self._wake
        if loop is None or event is None:
            return  # not running yet: its first cycle starts at once anyway
        with contextlib.suppress(RuntimeError):  # the loop has closed
            loop.call_soon_threadsafe(event.set)

    def notify(self, batch_size: int) -> None:
        """A session's records were spooled: wake at once only when a full batch is waiting."""
        self._notified += 1  # approximate under races, which only shifts one wake-up by a tick
        if self._notified >= batch_size:
            self._notified = 0
            self.wake()

    def settings_changed(self) -> None:
        """configure() was called: lift an auth pause, look at records waiting for a setting."""
        self.paused_until = 0.0
        self._not_before = 0.0  # a new base URL or key deserves a try at once
        self._unreachable = 0
        self._verified = False
        self._recheck = True
        self.wake()

    def wait_progress(self, generation: int, timeout: float) -> None:
        """Block until a cycle after `generation` ended, or `timeout` seconds."""
        with self._progress:
            if self.generation == generation:
                self._progress.wait(timeout)

    def stop(self, timeout: float) -> bool:
        """Cancel what is in flight, give back claims, join within `timeout`. True if the thread ended."""
        self._stopping = True
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._cancel)
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return True
        thread.join(max(0.0, timeout))
        return not thread.is_alive()

    # -- exporter thread ------------------------------------------------------------------------
    def _cancel(self) -> None:
        for task in [self._task, *self._tails]:
            if task is not None and not task.done():
                task.cancel()
        if self._wake is not None:
            self._wake.set()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._main(loop))
        except Exception as exc:
            report("exporter", exc)
        finally:
            try:
                if self._client is not None:
                    loop.run_until_complete(self._client.aclose())
            except Exception as exc:
                report("exporter close", exc)
            loop.close()
            self._signal()

    async def _main(self, loop: asyncio.AbstractEventLoop) -> None:
        self._wake = asyncio.Event()
        self._loop = loop
        suppressed = False
        while not self._stopping:
            suppressed = suppressed or _suppress_otel()
            self._task = asyncio.ensure_future(self._guarded_cycle())
            try:
                progressed, due = await self._task
            except asyncio.CancelledError:
                if not self._stopping:
                    raise
                break
            self._signal()
            if progressed or self._stopping:
                continue
            timeout = get_settings().flush_interval
            if due is not None:
                timeout = min(timeout, due - time.time())
            if timeout > 0:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
        for task in list(self._tails):
            task.cancel()
        if self._tails:
            await asyncio.wait(set(self._tails))
        for spool in self._spools.values():
            try:
                Queue(spool, self.owner).release_mine()
            except Exception as exc:
                report("exporter release", exc)

    def _signal(self) -> None:
        with self._progress:
            self.generation += 1
            self._progress.notify_all()

    async def _guarded_cycle(self) -> tuple[bool, float | None]:
        try:
            return await self._cycle()
        except Exception as exc:  # never a hot loop on an internal error: wait one interval
            report("exporter", exc)
            return False, time.time() + get_settings().flush_interval

    async def _post(self, client: httpx.AsyncClient, path: str, payload: dict[str, Any]) -> Outcome:
        # Looked up in this module at each call: tests patch `worker.post`.
        return await post(client, path, payload)
