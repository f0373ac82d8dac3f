"""The call line's fast encoding is the JSON encoder's, value for value."""

from __future__ import annotations

import json
import math
import time

import pytest

import keito_instrument as keito
from keito_instrument._journal import _dumps
from keito_instrument._usage import normalised_call


@pytest.mark.parametrize(("model", "provider", "sid"), [
    ("gpt-4o-mini", "openai", "plain"),
    ("claude \"quoted\" \\ model", None, "ünïcødé-ß-😀"),
    ("m\u2028odel\x00", "p\nq", "id\ud800lone"),  # line separators, NULs and a lone surrogate
])
def test_the_fast_line_parses_to_what_the_encoder_writes(model: str, provider: str | None, sid: str) -> None:
    with keito.session(session_id=sid) as session:
        usage = normalised_call(model, provider, input_tokens=1_234, output_tokens=56, cache_read_tokens=7,
                                reasoning_tokens=8, usage_missing=True)
        fast = json.loads(session._call_line(usage, None))
        slow = json.loads((_dumps(["c", session.session_id, session.ident, session.close[0], fast[4], usage.model,
                                   usage.provider, usage.input_tokens, usage.output_tokens, 7, 0, 8, 0, 1, None,
                                   None]) + "\n")
                          .encode("utf-8", "replace"))
    assert fast == slow and fast[7:14] == [1_234, 56, 7, 0, 8, 0, 1]
    assert b"\n" not in session._call_line(usage, None)[:-1]  # one line, whatever the names hold


@pytest.mark.parametrize("fields", [
    (), (7, 1.25, None), ("s\u2028", "quote\"", -3, 0.1 + 0.2), (float("nan"),), (True,), ({"a": 1},), ([1],),
])
def test_a_scalar_line_is_the_encoders_or_leaves_it_to_the_encoder(fields: tuple[object, ...]) -> None:
    from keito_instrument._session import _scalar_line

    line = _scalar_line("b", "sid-\u00e9", "1.5", "r", fields)
    simple = all(type(v) in (int, str, type(None)) or (type(v) is float and math.isfinite(v)) for v in fields)
    if not simple:
        assert line is None  # a bool, a dict, a list or a NaN: the JSON encoder writes it
        return
    assert line is not None and line.endswith(b"\n") and b"\n" not in line[:-1]
    parsed = json.loads(line)
    assert parsed[:4] == ["b", "sid-\u00e9", "1.5", "r"] and isinstance(parsed[4], float)
    assert parsed[5:] == list(fields)


@pytest.mark.parametrize("sid", ["plain", "ünïcødé \"q\" \\ \u2028", "id\ud800lone"])
def test_the_run_and_end_lines_parse_to_what_the_encoder_writes(sid: str) -> None:
    from keito_instrument._session import Session, SessionOptions

    session = Session(sid, SessionOptions())
    start, end = session.wall(session._mono0 + 0.25), session.wall(session._mono0 + 1.5)
    begin, text, stamp = session._begin_line(7, start)
    finish, _ = session._run_line(7, start, end, stamp, text)
    ended = session._end_line("completed", [[start, end]], [1, 2, 3, 4, 5], stamp)
    kept = sid.encode("utf-8", "replace").decode()  # (a lone surrogate is written as "?", as before)
    for line, fields in ((begin, [7, start]), (finish, [7, start, end]),
                         (ended, ["completed", [[start, end]], [1, 2, 3, 4, 5]])):
        assert line.endswith(b"\n") and b"\n" not in line[:-1]
        parsed = json.loads(line)
        assert parsed[:4] == [parsed[0], kept, session.ident, "r"] and parsed[5:] == fields
        assert parsed[4] == float(stamp) and abs(parsed[4] - time.time()) < 60


def test_a_run_line_far_from_the_clock_keeps_its_own_stamp() -> None:
    from keito_instrument._session import Session, SessionOptions

    session = Session("s", SessionOptions())
    start = session.wall(session._mono0) - 3600.0  # back-dated an hour
    line, _text, stamp = session._begin_line(1, start)
    assert json.loads(line)[6] == start and abs(float(stamp) - time.time()) < 60
