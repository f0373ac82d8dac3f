"""`report --html`: one self-contained page (no script, no remote resource) whose charts a real
browser draws: headless Chromium renders it, and the screenshot holds the charts' colours."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import zlib
from datetime import timedelta
from pathlib import Path

import pytest

import keito_instrument as keito
from keito_instrument.cli import main
from keito_instrument.cli._html import PALETTE, _nice_max
from tests.test_report_billing import TZ, D, Outcome, at, work

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def ledger_with_a_week() -> None:
    keito.configure(timezone=TZ)
    for n in range(9):
        day = D + timedelta(days=n % 4)
        done = (Outcome(("ticket_resolved", "refund_issued", "lead_qualified")[n % 3], 1 + n % 2, 4.0, True, None,
                        None, {}, 1, at(day, 12, n)),)
        work(f"s{n}", at(day, 9, n), 20 + 10 * n, agent=f"agent-{n % 3}", project=f"p{n % 2}", calls=1 + n,
             outcomes=done)


def write_page(tmp_path: Path, *args: str) -> Path:
    page = tmp_path / "report.html"
    assert main(["report", "--html", str(page), *args]) == 0
    return page


def test_the_page_is_self_contained_and_light(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ledger_with_a_week()
    text = write_page(tmp_path, "--by", "project,agent", "--hourly-rate", "90").read_text()
    assert "Wrote" in capsys.readouterr().err
    assert not re.search(r"https?:|ftp:|//[a-z0-9]", text, re.I)  # no remote URL at all
    assert not re.search(r"<(script|link|img|iframe|object|embed)\b|@import|url\(", text, re.I)
    assert len(text.encode()) < 60_000
    assert text.count("<svg") == 3 and text.count('class="bar"') >= 9
    assert "revenue (USD)" in text and "TOTAL" in text and "$" in text
    assert "<tr class=total>" in text and "p1</td>" in text


def test_an_empty_period_still_writes_a_page(tmp_path: Path) -> None:
    ledger_with_a_week()
    text = write_page(tmp_path, "--since", "2999-01-01").read_text()
    assert "No priced LLM calls in this period." in text and "<svg" not in text


def test_axis_maxima_are_round() -> None:
    assert [_nice_max(v) for v in (0, 0.0042, 0.05, 0.07, 1, 3.2, 740)] == [1, 0.005, 0.05, 0.1, 1, 5, 1000]


def browser() -> str:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no headless Chromium on this machine (scripts/test installs Debian's `chromium` where apt "
                "can): the HTML report's rendering is not checked here")


def render(page: Path, tmp_path: Path, *how: str) -> subprocess.CompletedProcess[bytes]:
    """Run headless Chromium on the page with every network path closed (no DNS, a dead proxy)."""
    profile = tmp_path / "profile"
    profile.mkdir(exist_ok=True)
    argv = [browser(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-extensions", "--disable-breakpad",
            "--disable-domain-reliability", "--no-first-run", "--no-default-browser-check", "--hide-scrollbars",
            "--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND", "--force-device-scale-factor=1",
            f"--user-data-dir={profile}", *how, page.as_uri()]
    done = subprocess.run(argv, capture_output=True, timeout=120, cwd=tmp_path,
                          env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    return done


def pixels(png: bytes) -> tuple[int, int, list[bytes]]:
    """Decode an 8-bit RGB or RGBA PNG (the stdlib only): width, height and rows of RGB(A) bytes."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, data, width, height, kind = 8, b"", 0, 0, 0
    while pos < len(png):
        (length,), name = struct.unpack(">I", png[pos:pos + 4]), png[pos + 4:pos + 8]
        body = png[pos + 8:pos + 8 + length]
        if name == b"IHDR":
            width, height, depth, kind = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and kind in (2, 6), (depth, kind)
        elif name == b"IDAT":
            data += body
        pos += 12 + length
    step = 4 if kind == 6 else 3
    raw, stride, prev, rows = zlib.decompress(data), width * step, bytearray(width * step), []
    for y in range(height):
        kind_of_filter = raw[y * (stride + 1)]
        row = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        _unfilter(kind_of_filter, row, prev, step)
        rows.append(bytes(row))
        prev = row
    return width, height, rows


def _unfilter(kind: int, row: bytearray, prev: bytearray, step: int) -> None:
    if kind == 1:
        for i in range(step, len(row)):
            row[i] = (row[i] + row[i - step]) & 255
    elif kind == 2:
        for i in range(len(row)):
            row[i] = (row[i] + prev[i]) & 255
    elif kind == 3:
        for i in range(len(row)):
            row[i] = (row[i] + ((row[i - step] if i >= step else 0) + prev[i]) // 2) & 255
    elif kind == 4:
        for i in range(len(row)):
            a, b, c = (row[i - step], prev[i], prev[i - step]) if i >= step else (0, prev[i], 0)
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            row[i] = (row[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255


def test_chromium_draws_the_charts(tmp_path: Path) -> None:
    browser()
    ledger_with_a_week()
    page = write_page(tmp_path, "--by", "day", "--hourly-rate", "90")
    dom = render(page, tmp_path, "--dump-dom").stdout.decode()
    svgs = re.findall(r"<svg\b[^>]*>.*?</svg>", dom, re.S)
    assert len(svgs) == 3, "the browser parsed three inline SVG charts"
    for svg in svgs:
        bars = re.findall(r'<rect class="bar"[^>]*\bwidth="([\d.]+)" height="([\d.]+)"', svg)
        assert bars and all(float(w) > 0 and float(h) > 0 for w, h in bars), svg[:300]
    render(page, tmp_path, "--screenshot=shot.png", "--window-size=900,1500")
    width, height, rows = pixels((tmp_path / "shot.png").read_bytes())
    step = len(rows[0]) // width
    seen: dict[bytes, int] = {}
    for row in rows:
        for x in range(0, len(row), step):
            colour = row[x:x + 3]
            seen[colour] = seen.get(colour, 0) + 1
    assert len(seen) > 20, "the screenshot is not blank"
    white = seen.get(b"\xff\xff\xff", 0)
    assert white < width * height * 0.97
    for colour in PALETTE[:3]:  # gpt-4o-mini's cost, the hours' bars, the outcomes' types
        rgb = bytes.fromhex(colour[1:])
        assert seen.get(rgb, 0) > 400, f"no chart drawn in {colour} ({seen.get(rgb, 0)} pixels)"
