"""The kernel's bounded tables (`OpenRuns`, `Recent`, the response ids in `seen`) and the switch's `update`."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from keito_instrument.integrations import _kernel as kernel
from keito_instrument.integrations._runs import OpenRuns, Recent


@dataclass
class _Run:
    born: float
    name: str = field(default="")


def test_the_table_gives_back_runs_beyond_its_count_cap_oldest_first() -> None:
    table: OpenRuns[int, _Run] = OpenRuns(max_open=3, max_age=1e9)
    for key in range(3):
        assert table.add(key, _Run(born=float(key))) == []
    assert [k for k, _ in table.add(3, _Run(born=3.0))] == [0]
    assert list(table) == [1, 2, 3] and len(table) == 3 and 2 in table and 0 not in table


def test_the_table_gives_back_runs_older_than_its_age_cap() -> None:
    table: OpenRuns[str, _Run] = OpenRuns(max_open=100, max_age=10.0, sweep_every=100)
    now = time.monotonic()
    table.add("old", _Run(born=now - 11.0))
    table.add("young", _Run(born=now - 5.0))
    assert [k for k, _ in table.sweep(now=now)] == ["old"]
    assert table.get("young") is not None and table.get("old") is None


def test_sweep_every_defers_the_age_sweep_but_never_the_count_cap() -> None:
    table: OpenRuns[int, _Run] = OpenRuns(max_open=2, max_age=0.0, sweep_every=64)
    assert table.add(1, _Run(born=0.0)) == []  # too old, but no sweep due yet
    assert table.add(2, _Run(born=0.0)) == []
    assert [k for k, _ in table.add(3, _Run(born=0.0))] == [1, 2]  # over the cap: swept now, age cap too
    assert list(table) == [3]  # never swept by its own insert


def test_limits_are_read_again_at_each_sweep() -> None:
    limits = [(5, 1e9)]
    table: OpenRuns[int, _Run] = OpenRuns(limits=lambda: limits[0])
    for key in range(5):
        table.add(key, _Run(born=1.0))
    limits[0] = (2, 1e9)
    assert [k for k, _ in table.sweep()] == [0, 1, 2] and table.max_open == 2


def test_pop_drain_and_clear() -> None:
    table: OpenRuns[int, _Run] = OpenRuns()
    table.add(1, _Run(born=time.monotonic(), name="a"))
    table.add(2, _Run(born=time.monotonic(), name="b"))
    assert table.pop(1) is not None and table.pop(1) is None
    assert [run.name for _, run in table.drain()] == ["b"] and len(table) == 0
    table.add(3, _Run(born=0.0))
    table.clear()
    assert table.values() == []


def test_lock_free_inserts_from_many_threads_stay_bounded() -> None:
    table: OpenRuns[tuple[int, int], _Run] = OpenRuns(max_open=50, max_age=1e9, sweep_every=8)
    swept: list[int] = []

    def work(t: int) -> None:
        for i in range(2_000):
            swept.append(len(table.add((t, i), _Run(born=float(i)))))
            table.pop((t, i - 3))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    table.sweep()
    assert len(table) <= 50


def test_recent_remembers_the_last_keys_with_their_values() -> None:
    recent: Recent[int, str] = Recent(max_keys=2)
    recent.remember(1, "s1")
    recent.remember(2, "s2")
    recent.remember(3, "s3")
    assert 1 not in recent and recent.get(2) == "s2" and recent.get(9, "none") == "none" and len(recent) == 2
    recent.forget(2)
    assert 2 not in recent
    recent.clear()
    assert len(recent) == 0


def test_a_key_is_claimed_once_and_a_missing_key_always() -> None:
    recent: Recent[str, None] = Recent()
    assert recent.claim("resp_1") and not recent.claim("resp_1") and recent.claim("resp_2")
    assert recent.claim(None) and recent.claim(None) and recent.claim("") and len(recent) == 2


def test_claims_are_bounded_by_count_oldest_forgotten_first() -> None:
    recent: Recent[str, None] = Recent(max_keys=2)
    for key in ("a", "b", "c"):
        assert recent.claim(key)
    assert len(recent) == 2 and "a" not in recent
    assert recent.claim("a") and not recent.claim("c")  # "a" claimable again; "b" now forgotten
    assert "b" not in recent


def test_keys_older_than_the_age_cap_are_forgotten() -> None:
    now = [100.0]
    recent: Recent[str, str] = Recent(max_keys=100, max_age=10.0, clock=lambda: now[0])
    recent.remember("old", "s-old")
    now[0] = 105.0
    assert recent.claim("young")
    now[0] = 110.0
    assert not recent.claim("old")  # exactly at the cap: still remembered
    now[0] = 110.5
    assert recent.claim("old") and "young" in recent  # past the cap: forgotten, so claimable again
    now[0] = 116.0
    recent.remember("new", "s-new")
    assert "young" not in recent and "old" in recent and "new" in recent and len(recent) == 2


def test_re_remembering_a_key_keeps_its_age_and_takes_the_new_value() -> None:
    now = [0.0]
    recent: Recent[str, str] = Recent(max_age=10.0, clock=lambda: now[0])
    recent.remember("k", "first")
    now[0] = 8.0
    recent.remember("k", "second")
    assert recent.get("k") == "second"
    now[0] = 11.0
    recent.remember("other", "x")
    assert "k" not in recent


def test_claims_from_many_threads_count_each_key_once_and_stay_bounded() -> None:
    recent: Recent[int, None] = Recent(max_keys=10_000)
    won: list[int] = []

    def work() -> None:
        won.extend(key for key in range(2_000) if recent.claim(key))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(won) == list(range(2_000))
    small: Recent[int, None] = Recent(max_keys=50, max_age=1e9)
    threads = [threading.Thread(target=lambda t=t: [small.claim(t * 10_000 + i) for i in range(2_000)])
               for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(small) == 50 and len(small._at) == 50  # the ages are bounded with their keys


def test_the_switch_hands_new_settings_to_update_while_installed() -> None:
    seen: list[object] = []
    switch = kernel.Switch(lambda **kw: dict(kw), lambda handle: None,
                           update=lambda handle, **kw: seen.append((handle, kw)))
    handle = switch.on(project_id="p1")
    assert switch.on(project_id="p2") is handle and seen == [({"project_id": "p1"}, {"project_id": "p2"})]
    switch.off()
    assert switch.on(project_id="p3") == {"project_id": "p3"} and len(seen) == 1
    switch.off()
