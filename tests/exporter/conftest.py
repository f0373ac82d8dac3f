"""Exporter tests: a fast retry policy (real backoff logic, small delays)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from keito_instrument._export import policy


@pytest.fixture(autouse=True)
def _fast_policy() -> Iterator[None]:
    policy.set_policy(policy.RetryPolicy(base=0.02, cap=0.2, jitter=0.5, auth_pause=60.0, lease=30.0))
    yield
    policy.set_policy(None)
