"""Memory and disk over many sessions: RSS growth and the journal's size stay bounded.

    python benchmarks/bench_memory.py [--sessions 100000] [--quick]

In a fresh process (no credentials: the billing thread bills into a local ledger), after
`--warm-up` sessions (10,000: caches and the allocator at a steady state): run `--sessions`
one-call `@track_agent` sessions (a named conversation every tenth, ended explicitly), sampling
the process's resident memory (VmRSS) and the journal folder's size 20 times; then
flush. Prints the RSS trend (a least-squares line through the samples, per 100k sessions: RSS
wanders by several MiB between samples as SQLite's and the allocator's caches breathe), the
largest journal folder seen, and the ledger's size.
Targets (issue 9): RSS growth <= 5 MiB over 100k sessions; the journal bounded (compacted once
folded into the ledger).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

_CHILD = r"""
import gc, json, os, sys, time
import keito_instrument as keito
ledger, sessions, warm, every = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
keito.configure(ledger_path=ledger)

@keito.track_agent(agent_id="memory-bot")
def turn(i):
    keito.record_llm_call("gpt-4o-mini", "openai", input_tokens=100 + i % 50, output_tokens=10)

def rss_kib():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0

def journal_bytes():
    folder = ledger + ".journal"
    total = 0
    for name in os.listdir(folder) if os.path.isdir(folder) else []:
        total += os.path.getsize(os.path.join(folder, name))
    return total

for i in range(warm):  # to a steady state: caches, the ledger's pages, the allocator's arenas
    turn(i)
    if i % 5000 == 4999:
        keito.flush(60)
keito.flush(60)
gc.collect()
start = rss_kib()
samples, biggest = [], 0
for i in range(sessions):
    if i % 10 == 0:
        with keito.session(f"conversation-{i}"):
            keito.record_llm_call("gpt-4o-mini", "openai", input_tokens=7, output_tokens=1)
        keito.end_session(f"conversation-{i}")
    else:
        turn(i)
    if i % every == every - 1:
        keito.flush(60)  # (the billing thread keeps up in a real agent; a benchmark loop outruns it)
        gc.collect()
        samples.append(rss_kib())
        biggest = max(biggest, journal_bytes())
keito.flush(60)
gc.collect()
end = rss_kib()
print(json.dumps({"start_kib": start, "end_kib": end, "samples_kib": samples, "journal_max": biggest,
                  "journal_end": journal_bytes(), "ledger": os.path.getsize(ledger)}))
keito.shutdown(timeout=10)
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--warm-up", type=int, default=10_000)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    sessions, warm = (5_000, 2_000) if args.quick else (args.sessions, args.warm_up)
    every = max(1_000, sessions // 20)
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run([sys.executable, "-c", _CHILD, os.path.join(tmp, "memory.sqlite3"), str(sessions),
                               str(warm), str(every)],
                              capture_output=True, text=True, timeout=3600, check=True)
    out = json.loads(done.stdout.strip().splitlines()[-1])
    growth = (out["end_kib"] - out["start_kib"]) / 1024
    ys = [kib / 1024 for kib in out["samples_kib"]]
    xs = [every * (i + 1) for i in range(len(ys))]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / max(
        1e-9, sum((x - mx) ** 2 for x in xs))
    print(f"{sessions} sessions after a {warm}-session warm-up (no credentials: billed into a local ledger)")
    print(f"  RSS          start {out['start_kib'] / 1024:7.1f} MiB  end {out['end_kib'] / 1024:7.1f} MiB  "
          f"end - start {growth:+6.2f} MiB")
    print(f"  RSS trend    {slope * 100_000:+6.2f} MiB per 100k sessions  (target <= 5 MiB)")
    print("  RSS samples  " + " ".join(f"{kib / 1024:.1f}" for kib in out["samples_kib"]) + " MiB")
    print(f"  journal      largest {out['journal_max'] / 1024:7.0f} KiB  at the end "
          f"{out['journal_end'] / 1024:5.0f} KiB  (bounded: folded segments are deleted)")
    print(f"  ledger       {out['ledger'] / 1024 / 1024:7.1f} MiB  (every session's records, kept until pruned)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
