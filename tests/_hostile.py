"""Hostile values for the fuzz suites (hypothesis strategies) and the checks every example ends with.

Shared by tests/test_fuzz_api.py and integrations/*/tests/test_*_fuzz.py (imported as
`tests._hostile`; the repository root is on sys.path through pytest's `pythonpath`). Nothing here
imports an agent framework.

The checks: after `keito.flush()` against a `KeitoTestServer`, every create request the server
received is accepted by the server and valid under the contract rules (`keito_instrument.testing.
_contract`, and the published OpenAPI contract when it is beside the project), no record of the
ledger is left `sending`, and a session that had valid calls is in the ledger with at least that
many calls.
"""

from __future__ import annotations

import contextlib
import math
import os
import uuid
from collections.abc import Iterator
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

import keito_instrument as keito
from keito_instrument import _guard
from keito_instrument._export import policy
from keito_instrument._spool import Spool, get_spool
from keito_instrument.testing import KeitoTestServer
from keito_instrument.testing._contract import check_expense, check_time_entry

SLOW = os.environ.get("KEITO_SLOW_TESTS") == "1"


def fuzz_settings(examples: int = 30, slow_examples: int = 300) -> settings:
    """CI-sized by default, bigger with KEITO_SLOW_TESTS=1; no deadline (delivery is real I/O)."""
    return settings(
        max_examples=slow_examples if SLOW else examples,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                               HealthCheck.data_too_large],
        database=None,  # no .hypothesis directory in the work tree; failures print their example
        derandomize=not SLOW,  # CI runs are reproducible; slow runs explore
    )


# -- values ------------------------------------------------------------------------------------
class Unprintable:
    """An object whose str(), repr() and format() raise, and which equals nothing."""

    def __str__(self) -> str:
        raise RuntimeError("no str for you")

    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")

    def __format__(self, spec: str) -> str:
        raise RuntimeError("no format for you")

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """How hypothesis prints a failing example holding one (only hypothesis calls this)."""
        printer.text("Unprintable()")


class Opaque:
    """A plain object of a type nothing knows (its str() is the default `<...Opaque object at ...>`)."""


def deep(depth: int) -> Any:
    """A list nested `depth` levels deep (past the JSON encoder's recursion limit when large)."""
    value: Any = "bottom"
    for _ in range(depth):
        value = [value]
    return value


def circular() -> dict[str, Any]:
    """A dict that contains itself."""
    loop: dict[str, Any] = {"name": "loop"}
    loop["self"] = loop
    return loop


_ODD_CHARS = ["\ud800", "\udfff", "\udc80", "\x00", "\x1b", "\x7f", "\u2028", "\ufeff", "\u202e", "\n", "\t", "é"]

# Text with lone surrogates and control characters mixed in, and sometimes a huge one.
hostile_text: st.SearchStrategy[str] = st.one_of(
    st.text(alphabet=st.one_of(st.characters(), st.sampled_from(_ODD_CHARS)), max_size=40),
    st.sampled_from(["", " ", "\ud800", "a\udcffb", "\x00\x00", "x" * 5000, "é" * 3000]),
    st.integers(20_000, 200_000).map(lambda n: "Z" * n),
)

hostile_numbers: st.SearchStrategy[Any] = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, 2**63, 2**64, 2**63 - 1, -1, -(2**63), 10**30,
                     1e308, -0.0, 0.5, True, False, 0, 10**12 + 1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**70), max_value=2**70),
)


def _oddballs() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.builds(Unprintable), st.builds(Opaque), st.binary(max_size=20), st.none(),
        st.just(b"\xff\xfe"), st.just(object()), st.sampled_from([[1, 2], {"a": 1}, (3,), {4}, frozenset()]),
    )


hostile_scalars: st.SearchStrategy[Any] = st.one_of(hostile_numbers, hostile_text, _oddballs())

# Dict keys a JSON encoder refuses or mangles: tuples, None, floats (NaN), objects, bytes.
hostile_keys: st.SearchStrategy[Any] = st.one_of(
    hostile_text, st.integers(-5, 5), st.none(), st.just(math.nan), st.just((1, 2)), st.just(b"k"),
    st.builds(Unprintable), st.builds(Opaque), st.just(True), st.just(frozenset({1})),
)

# Nested lists, dicts with hostile keys and tuples of hostile scalars.
nested_values: st.SearchStrategy[Any] = st.recursive(
    hostile_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(hostile_keys, inner, max_size=4),
        st.tuples(inner, inner),
    ),
    max_leaves=12,
)

# Those, and structures deeper than any recursion limit, and one that contains itself. (Not for
# values a framework deep-copies before we see them: copy.deepcopy itself fails on those.)
hostile_values: st.SearchStrategy[Any] = st.one_of(
    nested_values, st.integers(200, 3000).map(deep), st.builds(circular),
)

# Session / outcome metadata: usually a mapping with hostile keys and values, sometimes not a mapping.
hostile_metadata: st.SearchStrategy[Any] = st.one_of(
    st.dictionaries(hostile_keys, hostile_values, max_size=6),
    st.dictionaries(st.text(max_size=10), hostile_values, max_size=6),
    hostile_scalars,
    st.just({f"k{i}": "v" * 300 for i in range(40)}),  # far beyond Keito's 4 KB of metadata
)

# A token count: a real one, or anything at all.
token_counts: st.SearchStrategy[Any] = st.one_of(st.integers(0, 100_000), hostile_numbers, hostile_scalars)

# A model name: a real one, or not a string / not a name at all.
model_names: st.SearchStrategy[Any] = st.one_of(
    st.sampled_from(["gpt-4o-mini", "gpt-4o", "claude-sonnet-4-5", "no-such-model-xyz"]),
    hostile_scalars,
)

# Ids (project, task, agent, ...): a plausible string, or anything at all.
hostile_ids: st.SearchStrategy[Any] = st.one_of(st.sampled_from(["p1", "agent-7"]), hostile_scalars)

# Keyword arguments no signature has, mixed with the real ones.
unknown_kwargs: st.SearchStrategy[dict[str, Any]] = st.dictionaries(
    st.sampled_from(["foo", "session", "tokens", "model_name", "projectId", "meta"]), hostile_scalars, max_size=2
)

VALID_MODELS = ("gpt-4o-mini", "gpt-4o", "claude-sonnet-4-5", "no-such-model-xyz")


def unique_id(prefix: str = "fuzz") -> str:
    """A session id no other example uses."""
    return f"{prefix}-{uuid.uuid4().hex}"


# -- delivery and the checks -------------------------------------------------------------------
@contextlib.contextmanager
def delivering() -> Iterator[KeitoTestServer]:
    """A started `KeitoTestServer` this process delivers to, with a fast retry policy.

    The ledger is the test's own (the root conftest points KEITO_LEDGER at tmp_path), so every
    example of a hypothesis test shares it; `checked()` only looks at what an example added.
    """
    policy.set_policy(policy.RetryPolicy(base=0.02, cap=0.2, jitter=0.5, auth_pause=60.0, lease=30.0))
    server = KeitoTestServer().start()
    try:
        keito.configure(api_key=server.api_key, account_id=server.account_id, base_url=server.url,
                        project_id=server.project_id, task_id=server.task_id,
                        expense_category_id=server.expense_category_id)
        yield server
    finally:
        keito.shutdown(5.0)
        server.stop()
        policy.set_policy(None)


def _openapi_validate() -> Any:
    """The published-contract validator of tests/contract.py, or None when the contract is absent."""
    from tests import contract

    return contract.validate if contract.contract_path() is not None else None


class Checker:
    """Checks an example's delivery: call `mark()` before the example and `check()` after it."""

    def __init__(self, server: KeitoTestServer) -> None:
        self.server = server
        self.spool: Spool = get_spool()
        self.seen = 0
        self.validate = _openapi_validate()
        self.swallowed: list[tuple[str, BaseException]] = []
        _guard.add_swallow_listener(self._listen)

    def _listen(self, kind: str, exc: BaseException) -> None:
        self.swallowed.append((kind, exc))

    def close(self) -> None:
        """Stop listening to the guard."""
        _guard.remove_swallow_listener(self._listen)

    def mark(self) -> None:
        """Start a new example: only requests after this are checked."""
        self.seen = len(self.server.requests)
        self.swallowed.clear()

    def no_internal_errors(self) -> None:
        """Nothing the library's last-resort guard swallowed since `mark()` (each is a bug: the
        root conftest fails the test for it anyway, this fails the example so hypothesis shrinks it)."""
        if self.swallowed:
            kind, exc = self.swallowed[0]
            raise AssertionError(f"internal error swallowed in {kind}: {exc!r}") from exc

    def check(self, expected_calls: dict[str, int] | None = None, timeout: float = 15.0) -> None:
        """Flush, then assert the four properties (see the module docstring).

        `expected_calls`: session id -> how many valid calls it had (it must be billed with at
        least that many).
        """
        self.no_internal_errors()
        assert keito.flush(timeout), f"flush() timed out; ledger: {self.spool.counts()}"
        self.no_internal_errors()
        counts = self.spool.counts()
        assert counts["sending"] == 0, f"records left sending: {counts}"
        dead = self.spool.records(state="dead")
        assert not dead, f"dead letters: {[(r['kind'], r['last_error']) for r in dead]}"
        assert counts["pending"] == 0, f"records not delivered: {counts}"
        for request in self.server.requests[self.seen:]:
            if request.method != "POST":
                continue
            body = request.body
            if request.path.endswith("/expenses"):
                error, kind = check_expense(body), "expense"
            else:
                error = check_time_entry(body)
                kind = "time_entry" if (body or {}).get("hours") else "outcome"
            assert error is None, f"contract-invalid {kind}: {error}: {str(body)[:500]}"
            assert request.status is not None and 200 <= request.status < 300, (request.status, str(body)[:300])
            if self.validate is not None:
                self.validate(kind, body)
        if expected_calls:
            billed = {row["session_id"]: row for row in self.spool.sessions()}
            for session_id, calls in expected_calls.items():
                if calls <= 0:
                    continue
                row = billed.get(session_id)
                assert row is not None, f"session {session_id!r} with {calls} valid call(s) was not billed"
                assert row["llm_calls"] >= calls, (session_id, row["llm_calls"], calls)
        self.mark()
