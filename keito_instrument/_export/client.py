"""The HTTP layer: an httpx client with Keito's headers, and the classification of every outcome.

The classification separates what a retry policy needs: "refused" (nothing reached the server,
or the server certainly did nothing: retry the POST), "ambiguous" (the record may have been
stored: reconcile by listing before any retry), "dead" (refused for good) and "pause" (the key
or its permissions are wrong: stop sending until the settings change).
"""

from __future__ import annotations

import platform
from typing import Any

import httpx

from .._config import Settings
from .._forksafe import section
from .._version import __version__
from .policy import PAUSE, RETRY_AMBIGUOUS, RETRY_REFUSED, Outcome, parse_retry_after

__all__ = [
    "ListError",
    "Outcome",
    "classify_error",
    "classify_response",
    "error_reason",
    "headers",
    "list_record_ids",
    "make_client",
    "post",
]

USER_AGENT = f"keito-instrument/{__version__} (python {platform.python_version()}; httpx {httpx.__version__})"
LIST_PAGE_SIZE = 2000
MAX_LIST_PAGES = 1000
_REASON_MAX = 500


class ListError(Exception):
    """Listing a day's records failed; reconciliation must wait (the records stay ambiguous)."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.reason)
        self.outcome = outcome


def headers(settings: Settings) -> dict[str, str]:
    """The headers the official Keito clients send (the API key only in Authorization)."""
    result = {
        "User-Agent": USER_AGENT,
        "Accept": "application/json",
        "Content-Type": "application/json",
    }
    if settings.api_key:
        result["Authorization"] = f"Bearer {settings.api_key}"
    if settings.account_id:
        result["Keito-Account-Id"] = settings.account_id
    return result


def make_client(settings: Settings, transport: httpx.AsyncBaseTransport | None = None) -> httpx.AsyncClient:
    """A keep-alive pool sized for `max_concurrency` parallel requests."""
    limit = settings.max_concurrency
    with section():  # building the SSL context takes OpenSSL's locks: never fork half-way
        return httpx.AsyncClient(
            base_url=settings.base_url,
            headers=headers(settings),
            timeout=httpx.Timeout(settings.request_timeout),
            limits=httpx.Limits(max_connections=limit, max_keepalive_connections=limit),
            transport=transport,
            follow_redirects=False,
        )


def error_reason(response: httpx.Response) -> str:
    """'422 bad request: hours must be <= 24' from Keito's Harvest-style error body (never the request)."""
    detail = ""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        label = body.get("error")
        desc = body.get("error_description") or body.get("message")
        if isinstance(label, dict):  # the stale v1 shape, just in case
            desc = desc or label.get("message")
            label = label.get("code")
        detail = ": ".join(str(part) for part in (label, desc) if part)
    text = f"{response.status_code} {detail or response.reason_phrase}".strip()
    return text[:_REASON_MAX]


def classify_response(response: httpx.Response) -> Outcome:
    """Map an HTTP answer to an outcome (see the module docstring)."""
    status = response.status_code
    if 200 <= status < 300:
        remote_id: str | None = None
        try:
            body = response.json()
            if isinstance(body, dict) and body.get("id") is not None:
                remote_id = str(body["id"])
        except ValueError:
            pass
        return Outcome("delivered", remote_id=remote_id, status=status)
    reason = error_reason(response)
    retry_after = parse_retry_after(response.headers.get("Retry-After"))
    if status in RETRY_REFUSED:
        return Outcome("retry", retry_after=retry_after, reason=reason, status=status)
    if status in RETRY_AMBIGUOUS or status >= 500:
        return Outcome("retry", ambiguous=True, retry_after=retry_after, reason=reason, status=status)
    if status in PAUSE:
        return Outcome("pause", reason=reason, status=status)
    if 300 <= status < 400:  # a wrong base URL (http vs https, a proxy): a setting to fix, not the record
        where = response.headers.get("Location", "elsewhere")
        return Outcome("pause", reason=f"{status} redirected to {where}: check base_url", status=status)
    return Outcome("dead", reason=reason, status=status)


def classify_error(exc: httpx.HTTPError) -> Outcome:
    """Map a transport failure: refused before sending, or ambiguous once the request may have left."""
    name = type(exc).__name__
    if isinstance(
        exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)
    ):
        return Outcome("retry", reason=f"{name}: could not connect")
    timed_out = isinstance(exc, httpx.TimeoutException)
    return Outcome("retry", ambiguous=True, reason=f"{name}: no answer after sending", timed_out=timed_out)


async def post(client: httpx.AsyncClient, path: str, payload: dict[str, Any]) -> Outcome:
    """POST one record; never raises for HTTP or network failures."""
    try:
        response = await client.post(path, json=payload)
    except httpx.HTTPError as exc:
        return classify_error(exc)
    return classify_response(response)


async def list_record_ids(
    client: httpx.AsyncClient, path: str, spent_date: str, project_id: str | None
) -> dict[str, str]:
    """Every agent record of one day (and project) at `path`: {metadata.record_id: remote id}.

    Raises:
        ListError: a page could not be fetched (network failure or an error status), was not
            Keito's pagination envelope, or there were more than MAX_LIST_PAGES pages: the
            listing is incomplete, so nothing may be taken as "not delivered".
    """
    key = "expenses" if path.rstrip("/").endswith("expenses") else "time_entries"
    params: dict[str, Any] = {
        "from": spent_date,
        "to": spent_date,
        "source": "agent",
        "per_page": LIST_PAGE_SIZE,
    }
    if project_id:
        params["project_id"] = project_id
    found: dict[str, str] = {}
    page = 1
    while True:
        if page > MAX_LIST_PAGES:  # a partial listing must never count as "not found": that re-POSTs
            raise ListError(Outcome("retry", reason=f"the listing has more than {MAX_LIST_PAGES} pages"))
        try:
            response = await client.get(path, params={**params, "page": page})
        except httpx.HTTPError as exc:
            raise ListError(classify_error(exc)) from None
        if response.status_code != 200:
            raise ListError(classify_response(response))
        try:
            body = response.json()
        except ValueError:
            raise ListError(Outcome("retry", reason="200: the list answer is not JSON")) from None
        items = body.get(key) if isinstance(body, dict) else None
        total_pages = body.get("total_pages", 1) if isinstance(body, dict) else None
        if not isinstance(items, list) or not isinstance(total_pages, int) or isinstance(total_pages, bool):
            # Not Keito's envelope (a proxy's page, another API version): "not found" here would re-POST.
            raise ListError(Outcome("retry", reason=f"200: the list answer is not a page of {key}"))
        for item in items:
            meta = item.get("metadata") if isinstance(item, dict) else None
            if isinstance(meta, dict) and meta.get("record_id"):
                found[str(meta["record_id"])] = str(item.get("id", ""))
        if page >= total_pages:
            return found
        page += 1
