"""The exporter's own HTTP/1.1 client (wire.py) against real sockets: framing, keep-alive, caps,
broken servers, TLS, and when requests go through httpx instead."""

from __future__ import annotations

import asyncio
import datetime
import gzip
import ssl
import tracemalloc
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import keito_instrument as keito
from keito_instrument._export import client as kc
from keito_instrument._export import wire

KEY = "kto_wire_test_key_0123456789"
PROXIES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy")
CREATED = b'HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{"id":"te_1"}'


Serve = Callable[..., "asyncio.Future[Scripted]"]


@dataclass
class Scripted:
    """A server on 127.0.0.1 answering each request with the next scripted bytes (None: close)."""

    answers: list[bytes | None]
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0
    url: str = ""
    close_after_answer: bool = False

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while self.answers:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length")
                    ),
                    0,
                )
                self.requests.append(head + await reader.readexactly(length))
                answer = self.answers.pop(0)
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
                if self.close_after_answer:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., asyncio.Future[Scripted]]]:
    servers: list[asyncio.Server] = []

    async def start(*answers: bytes | None, close_after_answer: bool = False) -> Scripted:
        script = Scripted(list(answers), close_after_answer=close_after_answer)
        server = await asyncio.start_server(script.handle, "127.0.0.1", 0)
        servers.append(server)
        script.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        return script

    yield start  # type: ignore[misc]
    for server in servers:
        server.close()


def _client(url: str, request_timeout: float = 2.0) -> kc.KeitoClient:
    settings = keito.configure(api_key=KEY, account_id="cm_acct", base_url=url, request_timeout=request_timeout)
    client = kc.make_client(settings)
    assert client.wire is not None
    return client


async def _post(client: kc.KeitoClient) -> kc.Outcome:
    return await kc.post(client, "/api/v2/time_entries", {"project_id": "p"})


# -- the request ---------------------------------------------------------------------------------
async def test_the_request_carries_keitos_headers_and_the_body(serve: Serve) -> None:
    server = await serve(CREATED)
    async with _client(server.url) as client:
        out = await _post(client)
    assert out == kc.Outcome("delivered", remote_id="te_1", status=201)
    head, _, body = server.requests[0].partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /api/v2/time_entries HTTP/1.1"
    fields = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    assert fields["host"] == server.url.removeprefix("http://")  # the port, as it is not 80
    assert fields["authorization"] == f"Bearer {KEY}" and fields["keito-account-id"] == "cm_acct"
    assert fields["content-type"] == "application/json" and fields["accept-encoding"] == "gzip"
    assert fields["user-agent"].startswith(f"keito-instrument/{keito.__version__} ")
    assert int(fields["content-length"]) == len(body) and body == b'{"project_id":"p"}'


async def test_a_base_url_path_prefix_and_list_parameters_are_kept(
    serve: Serve,
) -> None:
    page = b'{"time_entries":[{"id":"te_4","metadata":{"record_id":"r4"}}],"total_pages":1}'
    server = await serve(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(page), page))
    async with _client(server.url + "/keito/") as client:
        found = await kc.list_record_ids(client, "/api/v2/time_entries", "2026-12-04", "prj 1")
    assert found == {"r4": "te_4"}
    first = server.requests[0].split(b"\r\n")[0].decode()
    assert first.startswith("GET /keito/api/v2/time_entries?from=2026-12-04&to=2026-12-04&source=agent&")
    assert "project_id=prj+1" in first and first.endswith(" HTTP/1.1")


# -- framing and keep-alive -------------------------------------------------------------------------
async def test_one_connection_carries_many_requests(serve: Serve) -> None:
    server = await serve(*[CREATED] * 5)
    async with _client(server.url) as client:
        outs = [await _post(client) for _ in range(5)]
    assert [o.kind for o in outs] == ["delivered"] * 5
    assert server.connections == 1


async def test_a_connection_the_server_closed_is_not_reused(serve: Serve) -> None:
    server = await serve(CREATED, CREATED, close_after_answer=True)
    async with _client(server.url) as client:
        first = await _post(client)
        await asyncio.sleep(0.05)  # the server's FIN arrives while the connection is idle
        second = await _post(client)
    assert (first.kind, second.kind) == ("delivered", "delivered")
    assert not second.ambiguous and server.connections == 2


async def test_connection_close_is_honoured(serve: Serve) -> None:
    closing = CREATED.replace(b"Content-Length", b"Connection: close\r\nContent-Length")
    server = await serve(closing, CREATED)
    async with _client(server.url) as client:
        outs = [await _post(client), await _post(client)]
    assert [o.kind for o in outs] == ["delivered", "delivered"] and server.connections == 2


async def test_chunked_answers_with_extensions_and_trailers_are_read(
    serve: Serve,
) -> None:
    chunked = (
        b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'5;ext=1\r\n{"id"\r\n8\r\n:"te_9"}\r\n0\r\nX-Trailer: yes\r\n\r\n'
    )
    server = await serve(chunked, CREATED)
    async with _client(server.url) as client:
        outs = [await _post(client), await _post(client)]
    assert [(o.kind, o.remote_id) for o in outs] == [("delivered", "te_9"), ("delivered", "te_1")]
    assert server.connections == 1  # a chunked answer leaves the connection reusable


async def test_an_answer_delimited_by_close_and_an_interim_100_are_read(
    serve: Serve,
) -> None:
    answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 201 Created\r\n\r\n" + b'{"id":"te_2"}'
    server = await serve(answer, close_after_answer=True)
    async with _client(server.url) as client:
        out = await _post(client)
    assert (out.kind, out.remote_id) == ("delivered", "te_2")


async def test_a_gzipped_answer_is_inflated(serve: Serve) -> None:
    packed = gzip.compress(b'{"id":"te_5"}')
    answer = b"HTTP/1.1 201 Created\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s" % (len(packed), packed)
    server = await serve(answer)
    async with _client(server.url) as client:
        out = await _post(client)
    assert (out.kind, out.remote_id) == ("delivered", "te_5")


# -- caps -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
async def test_an_answer_over_the_cap_is_ambiguous_and_not_kept(serve: Serve, framing: str) -> None:
    size = kc.ANSWER_CAP + 10
    if framing == "length":
        answer = b"HTTP/1.1 201 Created\r\nContent-Length: %d\r\n\r\n" % size  # never sent: not read
    elif framing == "chunked":
        answer = (
            b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n" % size + b"x" * size + b"\r\n0\r\n\r\n"
        )
    else:
        answer = b"HTTP/1.1 201 Created\r\n\r\n" + b"x" * size
    server = await serve(answer, close_after_answer=True)
    async with _client(server.url) as client:
        out = await _post(client)
    # A 2xx that could not be read may be a stored record: reconcile by listing before any retry.
    assert (out.kind, out.ambiguous, out.status) == ("retry", True, 201)
    assert "larger than 1 MiB" in out.reason


async def test_a_gzip_bomb_stops_at_the_cap(serve: Serve) -> None:
    bomb = gzip.compress(b"0" * (64 << 20))
    answer = b"HTTP/1.1 500 Oops\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s" % (len(bomb), bomb)
    server = await serve(answer)
    async with _client(server.url) as client:
        tracemalloc.start()
        try:
            out = await _post(client)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert out.kind == "retry" and out.ambiguous and "larger than 1 MiB" in out.reason
    assert peak < 16 << 20


async def test_an_unreadable_encoding_is_not_decoded(serve: Serve) -> None:
    answer = b"HTTP/1.1 201 Created\r\nContent-Encoding: br\r\nContent-Length: 2\r\n\r\nzz"
    server = await serve(answer)
    async with _client(server.url) as client:
        out = await _post(client)
    assert out.ambiguous and "Content-Encoding 'br' is not supported" in out.reason


# -- broken servers ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "answer",
    [
        None,  # closes without answering
        b"SPDY/3 200 OK\r\n\r\n",
        b"HTTP/1.1 20x OK\r\n\r\n",
        b"HTTP/1.1 201 Created\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 201 Created\r\nContent-Length: 5, 6\r\n\r\n12345",
        b"HTTP/1.1 201 Created\r\nContent-Length: 50\r\n\r\nshort",
        b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 201 Created\r\nX-Pad: " + b"p" * (70 << 10) + b"\r\n\r\n",
    ],
    ids=["no answer", "not http", "bad status", "bad header", "two lengths", "cut body", "bad chunk", "huge head"],
)
async def test_a_broken_answer_is_ambiguous(serve: Serve, answer: bytes | None) -> None:
    server = await serve(answer, CREATED, close_after_answer=True)
    async with _client(server.url) as client:
        out = await _post(client)
        again = await _post(client)  # the broken connection was dropped, not reused
    assert (out.kind, out.ambiguous, out.status) == ("retry", True, None), out
    assert again.kind == "delivered" and server.connections == 2


async def test_nothing_listening_is_refused_not_ambiguous(serve: Serve) -> None:
    server = await serve()
    port = server.url.rsplit(":", 1)[1]
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    free = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    assert str(free) != port
    async with _client(f"http://127.0.0.1:{free}") as client:
        out = await _post(client)
    assert (out.kind, out.ambiguous) == ("retry", False)
    assert "could not connect" in out.reason


async def test_a_silent_server_times_out_after_sending(serve: Serve) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1 << 16)
        await asyncio.sleep(5)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    try:
        async with _client(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", request_timeout=0.3) as client:
            out = await _post(client)
    finally:
        server.close()
    assert (out.kind, out.ambiguous, out.timed_out) == ("retry", True, True)
    assert "ReadTimeout" in out.reason


# -- which path -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("env", "direct"),
    [
        ({}, True),
        ({"HTTPS_PROXY": "http://proxy.corp:3128"}, False),
        ({"https_proxy": "http://proxy.corp:3128", "NO_PROXY": "keito.example.test"}, True),
        ({"ALL_PROXY": "http://proxy.corp:3128"}, False),
        ({"HTTP_PROXY": "http://proxy.corp:3128"}, True),  # applies to http URLs only
        ({"KEITO_HTTP": "httpx"}, False),
    ],
)
def test_requests_go_through_httpx_when_a_proxy_applies(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], direct: bool
) -> None:
    for name in (
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
    ):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert wire.usable("https://keito.example.test") is direct
    settings = keito.configure(api_key=KEY, base_url="https://keito.example.test")
    assert (kc.make_client(settings).wire is not None) is direct


def test_a_header_with_a_line_break_is_refused() -> None:
    with pytest.raises(ValueError, match="line break"):
        wire.Wire("http://127.0.0.1:1", {"Authorization": "Bearer a\r\nX-Evil: 1"}, timeout=1.0, limit=1)


# -- TLS --------------------------------------------------------------------------------------------
def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


async def test_https_is_verified(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cert_file, key_file = _self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    script = Scripted([CREATED, CREATED])
    server = await asyncio.start_server(script.handle, "127.0.0.1", 0, ssl=context)
    url = f"https://localhost:{server.sockets[0].getsockname()[1]}"
    try:
        async with _client(url) as client:  # certifi's roots: the self-signed certificate is refused
            refused = await _post(client)
        monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))  # as httpx, the roots SSL_CERT_FILE names
        async with _client(url) as client:
            delivered = await _post(client)
    finally:
        server.close()
    assert (refused.kind, refused.ambiguous) == ("retry", False) and "could not connect" in refused.reason
    assert (delivered.kind, delivered.remote_id) == ("delivered", "te_1")
    assert script.requests and b"Host: localhost:" in script.requests[0]
