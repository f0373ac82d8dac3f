"""Client-wide pacing: Retry-After pauses everything, rate-limit headers are counted down, and a
rate learned from a 429 keeps a rate-limited server's 429s rare (issue 11)."""

from __future__ import annotations

import asyncio
import itertools
import os
import time

import httpx
import pytest
import respx

import keito_instrument as keito
from keito_instrument._export import client as kc
from keito_instrument._export.pacing import Deferred, Pacer, parse_window
from keito_instrument._spool import Spool
from keito_instrument.testing import KeitoTestServer
from tests.exporter._respx import respx_client

NOW = 1_796_000_000.0


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def pacer(clock: Clock) -> Pacer:
    return Pacer(clock=clock)


def run_sessions(n: int) -> None:
    for _ in range(n):
        with keito.session():
            keito.record_llm_call("gpt-4o", "openai", input_tokens=1200, output_tokens=300)


# -- the pacer alone (a fake clock) ------------------------------------------------------------
def test_a_429_closes_the_gate_for_its_retry_after() -> None:
    clock = Clock()
    p = pacer(clock)
    assert p.next_start(clock.now) == clock.now  # no limit known: no wait
    p.take(clock.now)
    p.observe(429, {"Retry-After": "3"})
    assert p.blocked_until() == pytest.approx(1003.0)
    assert p.next_start(clock.now) == pytest.approx(1003.0)
    clock.now = 1003.0
    assert p.next_start(clock.now) == pytest.approx(1003.0)


def test_the_rate_is_learned_from_the_first_429_only_and_then_requests_are_spaced() -> None:
    clock = Clock()
    p = pacer(clock)
    for _ in range(40):  # 40 accepted in 1 s, then a 429 saying "3 s until the window resets"
        p.take(clock.now)
        clock.now += 0.025
        p.observe(201, {})
    p.take(clock.now)
    p.observe(429, {"Retry-After": "3"})
    learned = p.rate
    assert learned == pytest.approx(40 / 4.0 * 0.9, rel=0.01)
    for _ in range(7):  # the requests that were in flight with it get 429 too: nothing new learned
        p.take(clock.now)
        p.observe(429, {"Retry-After": "3"})
    assert p.rate == learned
    clock.now = p.blocked_until()
    starts = []
    for _ in range(5):
        start = p.next_start(clock.now)
        clock.now = start
        p.take(start)
        starts.append(start)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert gaps == pytest.approx([1 / learned] * 4)


def test_a_stray_429_after_a_few_requests_only_closes_the_gate() -> None:
    clock = Clock()
    p = pacer(clock)
    for _ in range(3):
        p.take(clock.now)
        p.observe(201, {})
    p.take(clock.now)
    p.observe(429, {"Retry-After": "2"})
    assert p.rate is None
    assert p.blocked_until() == pytest.approx(1002.0)


def test_the_learned_rate_grows_while_no_429_comes() -> None:
    clock = Clock()
    p = pacer(clock)
    for _ in range(20):
        p.take(clock.now)
        clock.now += 0.05
        p.observe(201, {})
    p.take(clock.now)
    p.observe(429, {"Retry-After": "1"})
    learned = p.rate
    assert learned is not None
    clock.now += 1.0 + p.quiet + 0.01
    p.next_start(clock.now)
    assert p.rate == pytest.approx(learned * p.growth)


def test_rate_limit_headers_are_counted_down_and_nothing_starts_at_zero() -> None:
    clock = Clock()
    p = pacer(clock)
    p.take(clock.now)
    p.observe(201, {"X-RateLimit-Remaining": "2", "X-RateLimit-Reset": "5"})
    p.take(clock.now)
    p.take(clock.now)
    assert p.next_start(clock.now) == pytest.approx(1005.0)  # two left, two started: wait for the reset
    assert p.rate is None  # no 429 was needed to slow down
    clock.now = 1005.0
    assert p.next_start(clock.now) == 1005.0  # a new window


def test_a_count_counts_the_other_requests_in_flight() -> None:
    clock = Clock()
    p = pacer(clock)
    for _ in range(3):
        p.take(clock.now)
    p.observe(201, {"RateLimit-Remaining": "3", "RateLimit-Reset": "10"})  # two others still in flight
    p.take(clock.now)
    assert p.next_start(clock.now) == pytest.approx(1010.0)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"X-RateLimit-Remaining": "7", "X-RateLimit-Reset": str(NOW + 40)}, (7, NOW + 40)),  # a Unix time
        ({"X-RateLimit-Remaining": "7", "X-RateLimit-Reset": "30"}, (7, NOW + 30)),  # seconds
        ({"RateLimit-Remaining": "0", "RateLimit-Reset": "2.5"}, (0, NOW + 2.5)),
        ({"RateLimit": "limit=100, remaining=50, reset=5"}, (50, NOW + 5)),
        ({"RateLimit": '"default";r=4;t=9'}, (4, NOW + 9)),
        ({"X-RateLimit-Remaining": "7"}, None),
        ({"X-RateLimit-Remaining": "lots", "X-RateLimit-Reset": "3"}, None),
        ({"X-RateLimit-Remaining": "inf", "X-RateLimit-Reset": "3"}, None),
        ({}, None),
    ],
)
def test_rate_limit_header_forms(headers: dict[str, str], expected: tuple[int, float] | None) -> None:
    assert parse_window(httpx.Headers(headers), NOW) == expected


async def test_a_wait_beyond_max_wait_is_deferred_not_held() -> None:
    clock = Clock(time.time())
    p = Pacer(clock=clock, max_wait=10.0)
    p.take(clock.now)
    p.observe(429, {"Retry-After": "3600"})
    with pytest.raises(Deferred) as info:
        await p.wait()
    assert info.value.wait == pytest.approx(3600.0)


async def test_a_short_gate_is_waited_for_on_the_event_loop() -> None:
    p = Pacer()
    p.take(time.time())
    p.observe(429, {"Retry-After": "0.3"})
    begin = time.monotonic()
    ticks = 0

    async def other_work() -> None:
        nonlocal ticks
        while time.monotonic() - begin < 0.25:
            ticks += 1
            await asyncio.sleep(0.01)

    await asyncio.gather(p.wait(), other_work())
    assert time.monotonic() - begin >= 0.25
    assert ticks > 5  # the loop kept running while the request waited


# -- through the HTTP layer --------------------------------------------------------------------
async def test_a_listing_waits_at_the_gate_a_post_closed() -> None:
    settings = keito.configure(api_key="kto_k_123456", account_id="cm_a", base_url="https://k.example.test")
    with respx.mock(base_url="https://k.example.test", assert_all_called=False) as mock:
        mock.post("/api/v2/time_entries").respond(429, headers={"Retry-After": "3600"})
        listing = mock.get("/api/v2/time_entries").respond(200, json={"time_entries": [], "total_pages": 1})
        async with respx_client(settings) as client:
            assert (await kc.post(client, "/api/v2/time_entries", {"a": 1})).kind == "retry"
            with pytest.raises(kc.ListError) as info:
                await kc.list_record_ids(client, "/api/v2/time_entries", "2026-12-01", None)
    assert info.value.outcome.kind == "release"
    assert not listing.called  # the whole client waits, not only the record that got the 429


# -- end to end against a rate-limited local server ---------------------------------------------
def _deliver_under_rate_limit(
    server: KeitoTestServer, ledger: Spool, sessions: int, window: float, headers: str | None
) -> float:
    server.set_rate_limit(40, window, headers=headers)  # type: ignore[arg-type]
    run_sessions(sessions)
    assert keito.flush(300.0), ledger.counts()  # a budget, not a speed test
    assert len(server.time_entries) == sessions and len(server.expenses) == sessions
    assert server.duplicates() == {}
    assert ledger.counts()["delivered"] == 2 * sessions
    api = [r for r in server.requests if r.path.startswith("/api/v2/")]
    refused = [r for r in api if r.status == 429]
    assert len(refused) == server.rate_limited
    return len(refused) / len(api)


def test_300_sessions_under_40_requests_a_second_see_few_429s(keito_server: KeitoTestServer, ledger: Spool) -> None:
    # The issue's scenario (40 requests per 4 s window) in a quarter of the time: same limit, 1 s window.
    ratio = _deliver_under_rate_limit(keito_server, ledger, 300, 1.0, None)
    assert ratio < 0.10  # on main: about 16% of the requests are 429s


@pytest.mark.parametrize("headers", ["x-ratelimit", "ratelimit"])
def test_rate_limit_headers_keep_429s_away(keito_server: KeitoTestServer, ledger: Spool, headers: str) -> None:
    ratio = _deliver_under_rate_limit(keito_server, ledger, 150, 1.0, headers)
    assert ratio < 0.02


@pytest.mark.slow
def test_the_issues_300_sessions_under_40_requests_per_4_s(
    keito_server: KeitoTestServer, ledger: Spool, pytestconfig: pytest.Config
) -> None:
    if "slow" not in (pytestconfig.getoption("markexpr") or "") and os.environ.get("KEITO_SLOW_TESTS") != "1":
        pytest.skip("slow: run with -m slow or KEITO_SLOW_TESTS=1")
    ratio = _deliver_under_rate_limit(keito_server, ledger, 300, 4.0, None)  # about 70 s
    assert ratio < 0.10  # on main: 112 of 712 requests were 429s


def test_a_429_pauses_every_request_of_the_exporter(keito_server: KeitoTestServer, ledger: Spool) -> None:
    run_sessions(2)
    assert keito.flush(10.0)  # Keito has accepted the key: requests now go 8 at a time
    keito_server.fail_next(429, count=1, retry_after=2, methods=("POST",))
    run_sessions(30)
    assert keito.flush(30.0), ledger.counts()
    requests = keito_server.requests
    first = next(i for i, r in enumerate(requests) if r.status == 429)
    limited_at = requests[first].at
    # Requests already on their way when the 429 came (at most the 8 in flight; on a loaded
    # machine they may arrive late) and then nothing until the 2 s are over.
    after = [r.at - limited_at for r in requests[first + 1 :]]
    in_flight = [t for t in after if t < 1.9]
    assert len(in_flight) <= 8, in_flight
    assert len(after) > len(in_flight)  # the rest waited out the Retry-After
    assert keito_server.duplicates() == {}
