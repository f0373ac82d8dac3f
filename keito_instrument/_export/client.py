"""The HTTP layer: an httpx client with Keito's headers, and the classification of every outcome.

The classification separates what a retry policy needs: "refused" (nothing reached the server,
or the server certainly did nothing: retry the POST), "ambiguous" (the record may have been
stored: reconcile by listing before any retry), "dead" (refused for good) and "pause" (the key
or its permissions are wrong: stop sending until the settings change).

Every request is defended against a hostile or broken server: it waits for its turn with the
client's `Pacer` (rate limits), the whole exchange (connecting, sending, waiting, reading the
body) must end within the client's `deadline`, the body is read up to a cap (`ANSWER_CAP` for
answers to POSTs and errors, `LIST_ANSWER_CAP` for list pages) and what is kept of a server's
text is redacted and cut (redact.py).
"""

from __future__ import annotations

import asyncio
import json
import platform
from collections.abc import Mapping
from typing import Any, Protocol

import httpx

from .._config import Settings
from .._forksafe import section
from .._version import __version__
from .pacing import Deferred, Pacer
from .policy import PAUSE, RETRY_AMBIGUOUS, RETRY_REFUSED, Outcome, parse_retry_after
from .redact import clean, install_log_filter, secrets_of
from .wire import Answer, Body, TooLarge, Wire, coding_of, usable

__all__ = [
    "ANSWER_CAP",
    "LIST_ANSWER_CAP",
    "KeitoClient",
    "ListError",
    "Outcome",
    "classify_error",
    "classify_response",
    "encode",
    "error_reason",
    "headers",
    "list_record_ids",
    "make_client",
    "post",
]


class Reply(Protocol):
    """What the classification reads of an answer: an httpx.Response or a wire.Answer."""

    @property
    def status_code(self) -> int: ...

    @property
    def reason_phrase(self) -> str: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    def json(self) -> Any: ...


USER_AGENT = f"keito-instrument/{__version__} (python {platform.python_version()}; httpx {httpx.__version__})"
LIST_PAGE_SIZE = 2000
MAX_LIST_PAGES = 1000
# A created record's echo or an error body is a few KB. A list page holds LIST_PAGE_SIZE items of
# at most 4 KB of metadata plus their fields: under 16 MiB by construction.
ANSWER_CAP = 1 << 20
LIST_ANSWER_CAP = 16 << 20
# httpx's timeouts name the step that was too slow (a connect timeout: nothing was sent), so they
# should fire first; the whole-request deadline is for answers that arrive a byte at a time.
DEADLINE_FACTOR = 2.0


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
        "Accept-Encoding": "gzip",  # the only coding read with a bound on the decoded size
        "Content-Type": "application/json",
    }
    if settings.api_key:
        result["Authorization"] = f"Bearer {settings.api_key}"
    if settings.account_id:
        result["Keito-Account-Id"] = settings.account_id
    return result


class KeitoClient(httpx.AsyncClient):
    """An `httpx.AsyncClient` with what all the exporter's requests share: the pacer and the deadline.

    Args:
        deadline: seconds each request may take in all, body included (httpx's own timeouts
            bound each read only: a server trickling a byte at a time never trips them).
        pacer: the rate-limit brakes (a fresh one by default).
        wire: when given, requests go through this lighter client (wire.py) instead of httpx.
    """

    def __init__(self, *, deadline: float, pacer: Pacer | None = None, wire: Wire | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.deadline = deadline
        self.pacer = pacer if pacer is not None else Pacer()
        self.wire = wire

    async def aclose(self) -> None:
        if self.wire is not None:
            self.wire.close()
        await super().aclose()


def make_client(settings: Settings, transport: httpx.AsyncBaseTransport | None = None) -> KeitoClient:
    """A keep-alive pool sized for `max_concurrency` parallel requests.

    `request_timeout` bounds connecting (and each step of httpx), and each request as a whole
    ends within DEADLINE_FACTOR times it, its body included. Requests go through wire.py's
    client unless a `transport` is given or a proxy applies to `base_url` (then httpx).
    """
    limit = settings.max_concurrency
    install_log_filter([settings.api_key] if settings.api_key else [])
    sent = headers(settings)
    with section():  # building the SSL context takes OpenSSL's locks: never fork half-way
        wire = None
        if transport is None and usable(settings.base_url):
            try:
                wire = Wire(settings.base_url, sent, timeout=settings.request_timeout, limit=limit)
            except ValueError:  # a header httpx must judge (its error is then the record's reason)
                wire = None
        return KeitoClient(
            deadline=settings.request_timeout * DEADLINE_FACTOR,
            wire=wire,
            base_url=settings.base_url,
            headers=sent,
            timeout=httpx.Timeout(settings.request_timeout),
            limits=httpx.Limits(max_connections=limit, max_keepalive_connections=limit),
            transport=transport,
            follow_redirects=False,
        )


def _request_secrets(response: Reply) -> list[str]:
    if isinstance(response, Answer):
        return response.secrets
    try:
        return secrets_of(response.request.headers) if isinstance(response, httpx.Response) else []
    except RuntimeError:  # a Response built without its request
        return []


def error_reason(response: Reply) -> str:
    """'422 bad request: hours must be <= 24' from Keito's Harvest-style error body (never the request).

    Redacted (no credential the request carried, no key-shaped text) and cut to a few hundred
    characters: it is stored as the record's `last_error` and shown by `status` and `doctor`.
    """
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
    return clean(text, _request_secrets(response))


def classify_response(response: Reply) -> Outcome:
    """Map an HTTP answer to an outcome (see the module docstring)."""
    status = response.status_code
    if 200 <= status < 300:
        remote_id: str | None = None
        try:
            body = response.json()
            if isinstance(body, dict) and body.get("id") is not None:
                remote_id = clean(str(body["id"]), _request_secrets(response))
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
        text = f"{status} redirected to {where}: check base_url"
        return Outcome("pause", reason=clean(text, _request_secrets(response)), status=status)
    return Outcome("dead", reason=reason, status=status)


def classify_error(exc: httpx.HTTPError) -> Outcome:
    """Map a transport failure: refused before sending, or ambiguous once the request may have left."""
    name = type(exc).__name__
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)):
        return Outcome("retry", reason=f"{name}: could not connect")
    timed_out = isinstance(exc, httpx.TimeoutException)
    return Outcome("retry", ambiguous=True, reason=f"{name}: no answer after sending", timed_out=timed_out)


def encode(payload: dict[str, Any]) -> bytes:
    """The request body: strict JSON (no NaN or infinities) in UTF-8.

    Raises:
        ValueError: a value JSON cannot carry (NaN, an infinity, a lone surrogate, a cycle).
        TypeError: a value that is not JSON data.
    """
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")


async def post(client: httpx.AsyncClient, path: str, payload: dict[str, Any]) -> Outcome:
    """POST one record; never raises for HTTP or network failures.

    A payload that cannot be encoded is a dead letter (it could never be sent), with the reason.
    """
    try:
        content = encode(payload)
    except (ValueError, TypeError, RecursionError) as exc:
        reason = f"the record cannot be encoded as JSON ({type(exc).__name__}: {exc}); it was not sent"
        return Outcome("dead", reason=clean(reason))
    answer = await exchange(client, "POST", path, ANSWER_CAP, content=content)
    return answer if isinstance(answer, Outcome) else classify_response(answer)


class _Progress:
    """Whether the request's headers started to leave (httpcore's trace events)."""

    def __init__(self) -> None:
        self.sent = False
        self.answered = False

    async def trace(self, name: str, info: dict[str, Any]) -> None:
        if "send_request_headers" in name:
            self.sent = True

    def mark_sent(self) -> None:
        self.sent = True


async def exchange(
    client: httpx.AsyncClient,
    method: str,
    path: str,
    cap: int,
    *,
    content: bytes | None = None,
    params: dict[str, Any] | None = None,
) -> Reply | Outcome:
    """One request, paced, within the client's deadline, its body read up to `cap` bytes.

    Returns the answer, fully read, or the Outcome of a failure: a network error, the deadline,
    an answer larger than `cap` (ambiguous: a POST may have been stored), or "release" when the
    rate limit's next turn is too far away to hold the request.
    """
    pacer: Pacer | None = getattr(client, "pacer", None)
    if pacer is not None:
        try:
            await pacer.wait()
        except Deferred as exc:
            return Outcome("release", retry_after=exc.wait, reason=str(exc))
    deadline = _deadline(client)
    progress = _Progress()
    wire: Wire | None = getattr(client, "wire", None)
    try:
        async with asyncio.timeout(deadline):
            if wire is not None:
                return await _send_wire(wire, method, path, cap, content, params, pacer, progress)
            extensions = {"trace": progress.trace}
            request = client.build_request(method, path, content=content, params=params, extensions=extensions)
            return await _send_capped(client, request, cap, pacer, progress)
    except httpx.HTTPError as exc:
        return classify_error(exc)
    except TimeoutError:
        if not progress.sent:
            return Outcome("retry", reason=f"no connection within the {deadline:g} s deadline")
        reason = f"no complete answer within the {deadline:g} s deadline"
        return Outcome("retry", ambiguous=True, reason=reason, timed_out=True)
    finally:
        if pacer is not None and not progress.answered:
            pacer.abandon()


def _deadline(client: httpx.AsyncClient) -> float:
    deadline = getattr(client, "deadline", None)
    if isinstance(deadline, (int, float)):
        return float(deadline)
    return float(client.timeout.read or 30.0)


async def _send_wire(
    wire: Wire,
    method: str,
    path: str,
    cap: int,
    content: bytes | None,
    params: dict[str, Any] | None,
    pacer: Pacer | None,
    progress: _Progress,
) -> Reply | Outcome:
    try:
        answer = await wire.request(method, path, cap, content, params, progress.mark_sent)
    except TooLarge as exc:
        if exc.answer is None:
            raise httpx.RemoteProtocolError(str(exc)) from None
        answer, problem = exc.answer, str(exc)
    else:
        problem = ""
    progress.answered = True
    if pacer is not None:
        pacer.observe(answer.status_code, answer.headers)
    if problem:
        status = answer.status_code
        return Outcome("retry", ambiguous=True, status=status, reason=f"{status}: {problem}; not read")
    return answer


async def _send_capped(
    client: httpx.AsyncClient, request: httpx.Request, cap: int, pacer: Pacer | None, progress: _Progress
) -> httpx.Response | Outcome:
    response = await client.send(request, stream=True)
    try:
        progress.answered = True
        if pacer is not None:
            pacer.observe(response.status_code, response.headers)
        body, problem = await read_capped(response, cap)
    finally:
        await response.aclose()
    status = response.status_code
    if body is None:
        return Outcome("retry", ambiguous=True, status=status, reason=f"{status}: {problem}; not read")
    plain = {k: v for k, v in response.headers.items() if k.lower() not in _BODY_HEADERS}
    reason_phrase = response.extensions.get("reason_phrase", b"")
    return httpx.Response(
        status, headers=plain, content=body, request=request, extensions={"reason_phrase": reason_phrase}
    )


_BODY_HEADERS = frozenset({"content-encoding", "content-length", "transfer-encoding"})


async def read_capped(response: httpx.Response, cap: int) -> tuple[bytes | None, str]:
    """The body of a streamed answer, decoded, or (None, why) once it is larger than `cap` bytes.

    Reads the raw stream and decodes gzip itself with a bound on the output, so a small
    compressed body cannot expand past the cap in memory either.
    """
    declared = response.headers.get("Content-Length", "")
    try:
        body = Body(cap, coding_of(response.headers))
        if declared.isdigit() and int(declared) > cap:
            raise TooLarge(body.too_large)
        async for raw in response.aiter_raw():
            body.feed(raw)
    except TooLarge as exc:
        return None, str(exc)
    return body.content(), ""


async def list_record_ids(
    client: httpx.AsyncClient, path: str, spent_date: str, project_id: str | None
) -> dict[str, str]:
    """Every agent record of one day (and project) at `path`: {metadata.record_id: remote id}.

    Raises:
        ListError: a page could not be fetched (network failure, the deadline, an error status,
            a page larger than LIST_ANSWER_CAP), was not Keito's pagination envelope, or there
            were more than MAX_LIST_PAGES pages: the listing is incomplete, so nothing may be
            taken as "not delivered".
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
        items, total_pages = await _list_page(client, path, key, {**params, "page": page})
        for item in items:
            meta = item.get("metadata") if isinstance(item, dict) else None
            if isinstance(meta, dict) and meta.get("record_id"):
                found[str(meta["record_id"])] = str(item.get("id", ""))
        if page >= total_pages:
            return found
        page += 1


async def _list_page(client: httpx.AsyncClient, path: str, key: str, params: dict[str, Any]) -> tuple[list[Any], int]:
    """(items, total_pages) of one page; raises ListError (see list_record_ids)."""
    answer = await exchange(client, "GET", path, LIST_ANSWER_CAP, params=params)
    if isinstance(answer, Outcome):
        raise ListError(answer)
    if answer.status_code != 200:
        raise ListError(classify_response(answer))
    try:
        body = answer.json()
    except ValueError:
        raise ListError(Outcome("retry", reason="200: the list answer is not JSON")) from None
    items = body.get(key) if isinstance(body, dict) else None
    total_pages = body.get("total_pages", 1) if isinstance(body, dict) else None
    if not isinstance(items, list) or not isinstance(total_pages, int) or isinstance(total_pages, bool):
        # Not Keito's envelope (a proxy's page, another API version): "not found" here would re-POST.
        raise ListError(Outcome("retry", reason=f"200: the list answer is not a page of {key}"))
    return items, total_pages
