"""The exporter's own HTTP/1.1 client: keep-alive connections over asyncio streams, nothing more.

Keito has no batch endpoint, so every session costs two POSTs. Through httpx, httpcore, anyio
and h11 one POST costs about 1.2 ms of CPU on a small machine: more than the whole rest of a
session's billing. This client writes the request in one piece and parses the answer itself,
for about a tenth of that. It keeps every defence of the httpx path (client.py): the answer is
read up to a cap, gzip is inflated with a bound, failures are raised as the httpx exceptions
that `classify_error` already sorts into "refused" (nothing left: `ConnectError`,
`ConnectTimeout`) and "ambiguous" (the request may have been stored: everything after the first
byte was written), and the caller's deadline bounds the whole exchange.

It is used for `base_url`s it can reach directly. Through a proxy (the `*_PROXY` environment
variables), with a custom transport, or with `KEITO_HTTP=httpx`, requests go through httpx.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import time
import urllib.request
import zlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx

from .redact import clean, secrets_of

HEAD_LIMIT = 64 << 10  # the status line and headers of an answer; Keito's are under 1 KB
READ_SIZE = 64 << 10
KEEPALIVE = 5.0  # seconds an idle connection is kept (httpx's default too)
HAPPY_EYEBALLS = 0.25  # seconds before the next address is tried alongside (RFC 8305)
_NO_BODY = frozenset({204, 304})
_HEX = b"0123456789abcdefABCDEF"


class Headers(Mapping[str, str]):
    """An answer's headers, looked up case-insensitively (repeated names joined with ', ')."""

    __slots__ = ("_items",)

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        items: dict[str, str] = {}
        for name, value in pairs:
            key = name.lower()
            items[key] = f"{items[key]}, {value}" if key in items else value
        self._items = items

    def __getitem__(self, name: str) -> str:
        return self._items[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


class Answer:
    """A fully read answer: what `classify_response` and the listing need of an httpx.Response."""

    __slots__ = ("content", "headers", "reason_phrase", "secrets", "status_code")

    def __init__(self, status: int, reason: str, headers: Headers, content: bytes, secrets: list[str]) -> None:
        self.status_code = status
        self.reason_phrase = reason
        self.headers = headers
        self.content = content
        self.secrets = secrets  # the credentials the request carried, to redact from server text

    def json(self) -> Any:
        """The body as JSON; ValueError when it is not."""
        return json.loads(self.content)


class TooLarge(Exception):
    """The answer's body is larger than the cap, or cannot be decoded (the reason is the text).

    `answer` holds the status and headers that did arrive (None when raised before them).
    """

    answer: Answer | None = None


class Body:
    """An answer's body, decoded as it arrives, never larger than `cap` bytes (gzip included)."""

    def __init__(self, cap: int, coding: str) -> None:
        self.cap = cap
        self.size = 0
        self.chunks: list[bytes] = []
        self._inflate = zlib.decompressobj(16 + zlib.MAX_WBITS) if coding == "gzip" else None
        self.coded = self._inflate is not None
        self.too_large = f"the answer is larger than {cap // (1 << 20) or cap} {'MiB' if cap >= 1 << 20 else 'bytes'}"

    def feed(self, raw: bytes) -> None:
        """Add raw bytes; raises TooLarge past the cap or on bad gzip."""
        data = raw
        if self._inflate is not None:
            try:
                data = self._inflate.decompress(raw, self.cap - self.size + 1)
            except zlib.error:
                raise TooLarge("the answer is not valid gzip") from None
            if self._inflate.unconsumed_tail:  # more output than the cap allows
                raise TooLarge(self.too_large)
        self.size += len(data)
        if self.size > self.cap:
            raise TooLarge(self.too_large)
        self.chunks.append(data)

    def content(self) -> bytes:
        return b"".join(self.chunks)


def coding_of(headers: Mapping[str, str]) -> str:
    """The answer's Content-Encoding; raises TooLarge for one that cannot be read with a bound."""
    coding = headers.get("Content-Encoding", "identity").strip().lower()
    if coding not in ("identity", "gzip", ""):
        raise TooLarge(f"the answer's Content-Encoding {clean(coding, limit=40)!r} is not supported")
    return coding


def usable(base_url: str) -> bool:
    """True when requests to `base_url` can go straight to its host (no proxy applies)."""
    if os.environ.get("KEITO_HTTP", "").strip().lower() == "httpx":
        return False
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    proxies = urllib.request.getproxies_environment()
    if not (proxies.get(parts.scheme) or proxies.get("all")):
        return True
    return bool(urllib.request.proxy_bypass(parts.hostname))  # NO_PROXY


def ssl_context() -> ssl.SSLContext:
    """Verification as httpx does it: SSL_CERT_FILE / SSL_CERT_DIR when set, else certifi's bundle."""
    cafile = os.environ.get("SSL_CERT_FILE") or None
    capath = os.environ.get("SSL_CERT_DIR") or None
    if cafile is None and capath is None:
        import certifi

        cafile = certifi.where()
    context = ssl.create_default_context(cafile=cafile, capath=capath)
    context.set_alpn_protocols(["http/1.1"])
    return context


class _Conn:
    __slots__ = ("idle_since", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.idle_since = 0.0

    def stale(self, now: float) -> bool:
        """Closed by the server, broken, holding unasked-for bytes, or idle too long."""
        reader = self.reader
        return (
            self.writer.is_closing()
            or reader.at_eof()
            or reader.exception() is not None
            or len(getattr(reader, "_buffer", b"")) > 0
            or now - self.idle_since > KEEPALIVE
        )

    def close(self) -> None:
        self.writer.close()


class Wire:
    """Keep-alive HTTP/1.1 connections to one origin, at most `limit` of them idle.

    Args:
        base_url: the origin and path prefix of every request.
        headers: sent with every request (the API key among them: never logged).
        timeout: seconds to connect (and finish TLS) before `httpx.ConnectTimeout`, and to wait
            for the answer's first line once the request is written before `httpx.ReadTimeout`
            (the caller's deadline bounds the whole exchange, a trickled body included).
        limit: idle connections kept for reuse.
        context: TLS settings for an https origin (`ssl_context()` by default).
    """

    def __init__(
        self,
        base_url: str,
        headers: Mapping[str, str],
        *,
        timeout: float,
        limit: int,
        context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        self.host = parts.hostname or ""
        tls = parts.scheme == "https"
        self.port = parts.port or (443 if tls else 80)
        self.context = (context or ssl_context()) if tls else None
        self.prefix = parts.path.rstrip("/")
        shown = f"[{self.host}]" if ":" in self.host else self.host
        if self.port != (443 if tls else 80):
            shown = f"{shown}:{self.port}"
        lines = [f"Host: {shown}", *(f"{name}: {value}" for name, value in headers.items())]
        if any("\r" in line or "\n" in line for line in lines):
            raise ValueError("a header value holds a line break")
        self._head = ("\r\n".join(lines) + "\r\n").encode("latin-1")
        self.secrets = secrets_of(headers)
        self.timeout = timeout
        self.limit = limit
        self._idle: list[_Conn] = []

    async def request(
        self,
        method: str,
        path: str,
        cap: int,
        content: bytes | None,
        params: Mapping[str, Any] | None,
        sent: Callable[[], None],
    ) -> Answer:
        """One exchange; `sent()` is called just before the first byte leaves.

        Raises:
            httpx.ConnectError, httpx.ConnectTimeout: nothing was sent.
            httpx.WriteError, httpx.ReadError, httpx.RemoteProtocolError: the request may have
                arrived (no complete answer).
            TooLarge: the answer arrived but its body is over `cap` or unreadable; its status
                and headers are on the exception's `answer`.
        """
        target = self.prefix + "/" + path.lstrip("/")
        if params:
            target += "?" + urlencode(params)
        body = content or b""
        head = f"{method} {target} HTTP/1.1\r\n".encode("latin-1") + self._head
        message = head + b"Content-Length: %d\r\n\r\n" % len(body) + body
        conn = await self._take()
        keep = False
        try:
            sent()
            try:
                conn.writer.write(message)
                await conn.writer.drain()
            except OSError as exc:
                raise httpx.WriteError(f"{type(exc).__name__}: {exc}") from None
            answer, keep = await _read_answer(conn.reader, cap, self.secrets, self.timeout)
            return answer
        finally:
            if keep and len(self._idle) < self.limit:
                conn.idle_since = time.monotonic()
                self._idle.append(conn)
            else:
                conn.close()

    async def _take(self) -> _Conn:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if not conn.stale(now):
                return conn
            conn.close()
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    self.host,
                    self.port,
                    ssl=self.context,
                    server_hostname=self.host if self.context else None,
                    limit=HEAD_LIMIT,
                    # A host whose IPv6 route is broken must still be reached over IPv4 in time.
                    happy_eyeballs_delay=HAPPY_EYEBALLS,
                ),
                self.timeout,
            )
        except TimeoutError:
            raise httpx.ConnectTimeout(f"no connection within {self.timeout:g} s") from None
        except (OSError, ssl.SSLError) as exc:
            raise httpx.ConnectError(f"{type(exc).__name__}: {exc}") from None
        return _Conn(reader, writer)

    def close(self) -> None:
        """Close the idle connections (those in use close when their exchange ends)."""
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


async def _read_answer(
    reader: asyncio.StreamReader, cap: int, secrets: list[str], first_byte: float
) -> tuple[Answer, bool]:
    """(the answer, whether the connection may be reused); raises as `Wire.request` says."""
    try:
        while True:
            try:
                async with asyncio.timeout(first_byte):
                    raw = await reader.readuntil(b"\r\n\r\n")
            except TimeoutError:
                raise httpx.ReadTimeout(f"no answer within {first_byte:g} s") from None
            status, reason, version, headers = _parse_head(raw)
            if not 100 <= status < 200:
                break
        answer = Answer(status, reason, headers, b"", secrets)
        connection = headers.get("Connection", "").lower()
        keep = version == "HTTP/1.1" and "close" not in connection
        if status in _NO_BODY:
            return answer, keep
        try:
            body = Body(cap, coding_of(headers))
            framed = await _read_body(reader, headers, body)
        except TooLarge as exc:
            exc.answer = answer
            raise
        answer.content = body.content()
        return answer, keep and framed
    except asyncio.IncompleteReadError:
        raise httpx.RemoteProtocolError("the server closed the connection before a complete answer") from None
    except asyncio.LimitOverrunError:
        raise httpx.RemoteProtocolError("the answer's headers are larger than 64 KiB") from None
    except OSError as exc:
        raise httpx.ReadError(f"{type(exc).__name__}: {exc}") from None


def _parse_head(raw: bytes) -> tuple[int, str, str, Headers]:
    lines = raw.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/1.") or len(code) != 3 or not code.isdigit():
        raise httpx.RemoteProtocolError("the answer does not start with an HTTP/1.x status line")
    pairs: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        if line[0] in " \t" and pairs:  # an obsolete folded continuation
            pairs[-1] = (pairs[-1][0], f"{pairs[-1][1]} {line.strip()}")
            continue
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise httpx.RemoteProtocolError("the answer has a malformed header line")
        pairs.append((name, value.strip()))
    return int(code), reason.strip(), version, Headers(pairs)


async def _read_body(reader: asyncio.StreamReader, headers: Headers, body: Body) -> bool:
    """Read the body into `body`; True when it was framed (the connection can be reused)."""
    if "chunked" in headers.get("Transfer-Encoding", "").lower():
        await _read_chunked(reader, body)
        return True
    declared = headers.get("Content-Length")
    if declared is None:  # delimited by the end of the connection
        while data := await reader.read(READ_SIZE):
            body.feed(data)
        return False
    values = {v.strip() for v in declared.split(",")}
    if len(values) != 1 or not next(iter(values)).isdigit():
        raise httpx.RemoteProtocolError("the answer's Content-Length is not one number")
    length = int(values.pop())
    if length > body.cap:
        raise TooLarge(body.too_large)
    await _read_exactly(reader, length, body)
    return True


async def _read_exactly(reader: asyncio.StreamReader, length: int, body: Body) -> None:
    left = length
    while left > 0:
        data = await reader.read(min(left, READ_SIZE))
        if not data:
            raise asyncio.IncompleteReadError(b"", left)
        body.feed(data)
        left -= len(data)


async def _read_chunked(reader: asyncio.StreamReader, body: Body) -> None:
    while True:
        line = (await reader.readuntil(b"\r\n")).split(b";", 1)[0].strip()
        if not line or len(line) > 16 or line.strip(_HEX):
            raise httpx.RemoteProtocolError("the answer has a malformed chunk size")
        size = int(line, 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers, ignored
                pass
            return
        if body.size + size > body.cap and not body.coded:
            raise TooLarge(body.too_large)
        await _read_exactly(reader, size, body)
        if await reader.readexactly(2) != b"\r\n":
            raise httpx.RemoteProtocolError("the answer has a malformed chunk")
