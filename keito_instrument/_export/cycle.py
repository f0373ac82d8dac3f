"""The delivery cycle of the exporter (see worker.py for its thread and loop).

A delivery cycle: claim a batch, reconcile the ambiguous records of each (day, project, path) with
one listing, POST the rest with bounded concurrency, store results. Everything here runs on the
exporter's own thread, inside its event loop. `DeliveryCycle` is the base of `Exporter`: it holds
the delivery state (the auth pause, the Retry-After gate, the client and its concurrency limits),
while the thread, the loop and the progress signal stay in worker.py.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import defaultdict
from typing import Any

import httpx

from .._config import Settings, get_settings
from .._guard import report
from .._spool import Spool, get_spool
from .client import ListError, list_record_ids, make_client
from .policy import Outcome, RetryPolicy, get_policy
from .queue import Claimed, Queue, next_due

_log = logging.getLogger("keito_instrument")


class DeliveryCycle:
    """One delivery cycle at a time, and the exporter-wide state it keeps between cycles.

    The attributes are set by `Exporter.__init__` (worker.py), which also provides `_post` and
    `_signal`.
    """

    owner: str
    paused_until: float
    _not_before: float
    _stopping: bool
    _recheck: bool
    _wake: asyncio.Event | None
    _tails: set[asyncio.Future[None]]
    _sem: asyncio.Semaphore
    _client: httpx.AsyncClient | None
    _client_key: tuple[Any, ...] | None
    _spools: dict[str, Spool]
    _warned: set[str]
    _verified: bool
    _unreachable: int
    _request_timeout: float
    _probe: asyncio.Lock

    async def _post(self, client: httpx.AsyncClient, path: str, payload: dict[str, Any]) -> Outcome:
        """POST one record (worker.py: through the name the tests patch)."""
        raise NotImplementedError

    def _signal(self) -> None:
        """Tell `wait_progress()` waiters that a cycle ended (worker.py)."""
        raise NotImplementedError

    async def _get_client(self, settings: Settings) -> httpx.AsyncClient:
        key = (
            settings.base_url,
            settings.api_key,
            settings.account_id,
            settings.request_timeout,
            settings.max_concurrency,
        )
        if self._client is None or key != self._client_key:
            if self._tails:  # let the previous client's requests end before closing it
                await asyncio.wait(set(self._tails))
            if self._client is not None:
                await self._client.aclose()
            self._client, self._client_key = make_client(settings), key
            self._sem = asyncio.Semaphore(settings.max_concurrency)
            self._request_timeout = settings.request_timeout
            self._verified = False
        return self._client

    def _gate(self) -> float:
        """No request starts before this: an auth pause, a Retry-After, a rate-limit window's reset."""
        return max(self.paused_until, self._rate_gate())

    def _rate_gate(self) -> float:
        """The Retry-After and rate-limit part of the gate (a configure() does not lift it early)."""
        pacer = getattr(self._client, "pacer", None)
        blocked = pacer.blocked_until() if pacer is not None else 0.0
        return max(self._not_before, blocked)

    def _warn_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            _log.warning(message, *args)

    async def _cycle(self) -> tuple[bool, float | None]:
        settings = get_settings()
        if settings.disabled or not settings.has_credentials:
            return False, None
        now = time.time()
        gate = self._gate()
        if now < gate:
            return False, gate
        spool = get_spool(settings.ledger_path)
        self._spools[str(spool.path)] = spool
        queue = Queue(spool, self.owner)
        if self._recheck:
            self._recheck = False
            queue.wake_missing()
        policy = get_policy()
        size = settings.batch_size
        lease = policy.lease + settings.request_timeout * 2 * math.ceil(size / settings.max_concurrency)
        claimed, missing = queue.claim(settings, size, lease, policy.missing_settings_retry)
        for name in missing:
            self._warn_once(
                "missing " + name,
                "keito-instrument: records wait for the %s setting (configure(%s=...)); kept, not sent",
                name,
                name,
            )
        if not claimed:
            return False, next_due(spool)
        client = await self._get_client(settings)
        results, to_send = await self._reconcile(client, queue, claimed, policy)
        await self._send(client, queue, to_send, results, policy)
        return True, None

    async def _reconcile(
        self, client: httpx.AsyncClient, queue: Queue, claimed: list[Claimed], policy: RetryPolicy
    ) -> tuple[list[tuple[Claimed, Outcome, float]], list[Claimed]]:
        """One listing per (path, day, project) of the ambiguous records: found ones are delivered."""
        results: list[tuple[Claimed, Outcome, float]] = []
        to_send = [c for c in claimed if not c.ambiguous]
        groups: dict[tuple[str, str, str | None], list[Claimed]] = defaultdict(list)
        for c in claimed:
            if c.ambiguous:
                groups[c.group].append(c)

        async def one(key: tuple[str, str, str | None]) -> tuple[dict[str, str] | None, Outcome | None]:
            async with self._sem:
                try:
                    return await list_record_ids(client, key[0], key[1], key[2]), None
                except ListError as exc:
                    return None, exc.outcome

        listed = await asyncio.gather(*(one(k) for k in groups))
        for key, (found, failure) in zip(list(groups), listed, strict=True):
            if found is None:
                assert failure is not None
                self._note(failure)
                out = Outcome(
                    "release" if failure.kind in ("pause", "release") else "retry",
                    ambiguous=True,
                    retry_after=failure.retry_after if failure.kind == "release" else None,
                    reason=f"reconcile: {failure.reason}",
                )
                results.extend((c, out, self._delay(failure, c, policy)) for c in groups[key])
                continue
            queue.mark_found(found)  # also settles unclaimed ambiguous records of the same day
            to_send.extend(c for c in groups[key] if c.record_id not in found)
        return results, to_send

    async def _send(
        self,
        client: httpx.AsyncClient,
        queue: Queue,
        to_send: list[Claimed],
        results: list[tuple[Claimed, Outcome, float]],
        policy: RetryPolicy,
    ) -> None:
        """POST the batch; return once every request has started, so the next batch is claimed while
        this one's last requests are in flight (no idle tail between batches). A background task
        stores the results."""
        all_started = asyncio.Event()
        started = 0

        async def send(rec: Claimed) -> tuple[Claimed, Outcome]:
            nonlocal started
            async with self._sem:
                started += 1
                if started == len(to_send):
                    all_started.set()
                if not self._verified:
                    # Until Keito has accepted one request from this client, send one at a time:
                    # a bad key then costs a single 401, not a burst of them.
                    async with self._probe:
                        return rec, await attempt(rec)
                return rec, await attempt(rec)

        async def attempt(rec: Claimed) -> Outcome:
            if time.time() < self._gate() or self._stopping:
                return Outcome("release", ambiguous=False)
            try:
                out = await self._post(client, rec.path, rec.payload)
            except Exception as exc:  # a bug of ours must not keep the rest of the batch in 'sending'
                report("exporter post", exc)
                return Outcome("retry", ambiguous=True, reason=f"internal error: {type(exc).__name__}")
            if out.status is None:
                pass  # decided here (not encodable, deadline, network): says nothing about the key
            elif out.status == 403 and self._verified:
                # Keito has accepted this key and account: the refusal is about this record (a
                # project the key may not use). A dead letter, rather than pausing everything; the
                # next request probes alone, so a 403 for the whole account still pauses at once.
                self._verified = False
                out = Outcome("dead", reason=out.reason, status=403)
            elif out.kind in ("delivered", "dead"):
                self._verified = True
            self._note(out)  # at once: a pause or a Retry-After gates the requests still queued
            return out

        async def finish() -> None:
            try:
                for rec, out in await asyncio.gather(*(send(r) for r in to_send)):
                    # Released records: the exporter-wide gate holds them back; a Retry-After is
                    # also written to the record so that other processes sharing the spool respect it.
                    release = out.kind == "release"
                    delay = max(0.0, self._rate_gate() - time.time()) if release else self._delay(out, rec, policy)
                    if release and out.retry_after is not None:
                        delay = max(delay, out.retry_after)
                    if out.kind == "dead":
                        _log.warning(
                            "keito-instrument: %s a %s record for good: %s",
                            "Keito refused" if out.status is not None else "cannot send",
                            rec.kind,
                            out.reason,
                        )
                    results.append((rec, out, delay))
                queue.finish(results)
            except Exception as exc:
                report("exporter", exc)
            finally:
                self._signal()
                if self._wake is not None:
                    self._wake.set()

        if not to_send:
            queue.finish(results)
            return
        tail = asyncio.ensure_future(finish())
        self._tails.add(tail)
        tail.add_done_callback(self._tails.discard)
        waiter = asyncio.ensure_future(all_started.wait())
        await asyncio.wait({tail, waiter}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()

    def _delay(self, out: Outcome, rec: Claimed, policy: RetryPolicy) -> float:
        if out.retry_after is not None:
            return out.retry_after
        if out.kind != "retry":
            return 0.0
        delay = policy.backoff(rec.attempts + 1)
        if out.timed_out:
            # No answer in time after sending: Keito may still be committing the record. Give it
            # at least one more request timeout before listing the day.
            delay = max(delay, self._request_timeout)
        return delay

    def _note(self, out: Outcome) -> None:
        """Exporter-wide effects of one outcome: an auth pause, a Retry-After gate."""
        now = time.time()
        if out.kind == "pause":
            self.paused_until = now + get_policy().auth_pause
            self._warn_once(
                "pause",
                "keito-instrument: Keito refused the requests (%s); delivery is paused until the settings "
                "change (records are kept). Run `keito-instrument doctor`.",
                out.reason,
            )
        elif out.kind == "retry" and out.retry_after is not None:
            self._not_before = max(self._not_before, now + out.retry_after)
        elif out.kind == "retry" and out.status is None and not out.ambiguous:
            # Keito is unreachable: back off as a whole instead of trying every record of the batch
            # (and competing with the host for the spool's write lock while doing so).
            self._unreachable += 1
            self._not_before = max(self._not_before, now + get_policy().backoff(self._unreachable))
        if out.status is not None:
            self._unreachable = 0
