"""The exporter's client for tests that mock the HTTP layer with respx.

respx replaces httpx's transport; the exporter's default client (wire.py) does not go through
httpx, so these tests ask for the httpx path, which a custom transport selects (as a proxy does).
"""

from __future__ import annotations

import httpx

import keito_instrument as keito
from keito_instrument._export import client as kc


def respx_client(settings: keito.Settings) -> kc.KeitoClient:
    """`make_client(settings)` on httpx's own transport (the one respx patches)."""
    client = kc.make_client(settings, transport=httpx.AsyncHTTPTransport())
    assert client.wire is None
    return client
