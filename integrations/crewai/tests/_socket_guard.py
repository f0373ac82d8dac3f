"""A socket guard for the CrewAI tests: nothing in the process reaches beyond 127.0.0.1.

Importing this module puts a recorder in front of `socket.socket.connect`, `connect_ex` and
`socket.getaddrinfo` for the whole process (so crewai's import and its background threads are
covered); `wrap_socket(monkeypatch)` puts it in front again for one test, ahead of the root
conftest's guard, whose refusals would otherwise go unrecorded. Each refused attempt is kept
until `take_attempts()`, so an attempt whose OSError a library swallowed still fails the test.
"""

from __future__ import annotations

import socket
import threading

import pytest

LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})
BEYOND_LOOPBACK: list[object] = []  # every refused attempt, in order, until taken
_guard_lock = threading.Lock()


def is_loopback(host: object) -> bool:
    """Whether `host` (a name, an address or bytes) is this machine's loopback."""
    text = host.decode() if isinstance(host, bytes) else str(host)
    return text in LOOPBACK or text.startswith("127.")


def _refuse(what: object) -> OSError:
    with _guard_lock:
        BEYOND_LOOPBACK.append(what)
    return OSError(f"crewai tests: no network beyond loopback ({what!r})")


def wrap_socket(monkeypatch: pytest.MonkeyPatch | None = None) -> None:
    """Put the refusing recorder in front of the current `connect`, `connect_ex`, `getaddrinfo`."""
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def outside(address: object) -> bool:
        return isinstance(address, tuple) and bool(address) and not is_loopback(address[0])

    def connect(self: socket.socket, address: object) -> None:
        if outside(address):
            raise _refuse(address)
        real_connect(self, address)  # type: ignore[arg-type]

    def connect_ex(self: socket.socket, address: object) -> int:
        if outside(address):
            raise _refuse(address)
        return real_connect_ex(self, address)  # type: ignore[arg-type]

    def getaddrinfo(host: object, *args: object, **kwargs: object) -> object:
        if host is not None and not is_loopback(host):
            raise socket.gaierror(str(_refuse(host)))
        return real_getaddrinfo(host, *args, **kwargs)  # type: ignore[arg-type]

    if monkeypatch is None:  # process-wide, from before crewai's import to the end of the run
        socket.socket.connect = connect  # type: ignore[method-assign,assignment]
        socket.socket.connect_ex = connect_ex  # type: ignore[method-assign,assignment]
        socket.getaddrinfo = getaddrinfo  # type: ignore[assignment]
    else:  # in front of the root conftest's per-test guard, so its refusals are recorded too
        monkeypatch.setattr(socket.socket, "connect", connect)
        monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def take_attempts() -> list[object]:
    """The attempts refused since the last call (and forget them)."""
    with _guard_lock:
        attempts = list(BEYOND_LOOPBACK)
        BEYOND_LOOPBACK.clear()
    return attempts


wrap_socket()
