"""Every Python block in the docs runs: README.md and docs/**/*.md, each block in a fresh process.

Each ```python block runs alone in a subprocess (`sys.executable`), offline: its own temporary
directory as cwd, HOME and ledger, no Keito credentials from the environment, Keito's base URL on
a refused loopback port, CrewAI's telemetry off, and a socket guard that refuses (and reports) any
connection or name lookup beyond loopback. The block passes when the process exits 0, nothing
tried to reach the network, and keito-instrument swallowed no internal error (its guard would
otherwise hide a wrong argument in the docs).

A page makes its fragments runnable with hidden directives, HTML comments that readers do not see:

    <!-- docs-test: page-setup        code run before every block of the page (before its first block)
    import keito_instrument as keito
    -->
    <!-- docs-test: setup             code run before the next block (right before it)
    crew = demo_crew()
    -->
    ```python
    ... the block readers see ...
    ```
    <!-- docs-test: check             code run after the block (right after it)
    assert keito.flush(5.0)
    -->
    <!-- docs-test: continue -->      (right before a block) run the page's earlier blocks first
    <!-- docs-test: skip (reason) --> (right before a block) do not run it; the reason is required

Setups and checks share the block's module namespace (`__main__`) and keep their line numbers
in the page, so a traceback points at the Markdown line. Top-level `await` runs under
`asyncio.run` (the code is compiled as by the asyncio REPL, so its names stay module globals).
A block whose code, setup or check imports an optional framework that is not installed
(`OPTIONAL_FRAMEWORKS`: langchain-core, crewai, opentelemetry, ...) is skipped, as in the core-only
virtualenv; any other missing module (a typo, a moved API) fails the block.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]
TIMEOUT = 120.0  # seconds, for one block's process
JOBS = min(2, os.cpu_count() or 1)  # block processes run at once
# What a block may need that the core-only virtualenv lacks: its blocks are skipped there.
OPTIONAL_FRAMEWORKS = frozenset({"agents", "anthropic", "crewai", "langchain_core", "langchain_openai", "langgraph",
                                 "openai", "openinference", "opentelemetry"})

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^\s`]*)")
_DIRECTIVE = re.compile(r"^[ \t]*<!--\s*docs-test:\s*(?P<kind>[a-z-]+)(?P<rest>.*)$")
_CODE_KINDS = {"page-setup", "setup", "check"}


class DirectiveError(Exception):
    """A `docs-test` comment that is malformed or not where it applies."""


@dataclass
class Piece:
    """Source code at its place in a page: `line` is the 1-based line of its first line."""

    code: str
    line: int


@dataclass
class Block:
    """One ```python block with its directives."""

    index: int
    code: Piece
    setup: Piece | None = None
    check: Piece | None = None
    skip: str | None = None
    continues: bool = False


@dataclass
class Page:
    """A Markdown page's python blocks and its page-level setup."""

    path: Path
    blocks: list[Block] = field(default_factory=list)
    setup: Piece | None = None


def _dedent(lines: list[str], indent: str) -> str:
    return "".join(line[len(indent):] if line.startswith(indent) else line.lstrip(" \t") for line in lines)


def _fence_end(lines: list[str], start: int, marker: str) -> int:
    """The index of the line that closes the fence opened at `start`."""
    closing = re.compile(rf"^[ \t]*{re.escape(marker[0])}{{{len(marker)},}}\s*$")
    for end in range(start + 1, len(lines)):
        if closing.match(lines[end]):
            return end
    raise DirectiveError(f"line {start + 1}: unclosed code fence")


def _code_directive(lines: list[str], start: int, kind: str, rest: str) -> tuple[Piece, int]:
    """The code of the directive opened at `start`, and the index of its closing `-->` line."""
    if rest.strip():
        raise DirectiveError(f"line {start + 1}: put the code of docs-test {kind} on the lines after "
                             f"`<!-- docs-test: {kind}`")
    for end in range(start + 1, len(lines)):
        if lines[end].strip() == "-->":
            return Piece("".join(lines[start + 1:end]), start + 2), end
        if "-->" in lines[end]:
            raise DirectiveError(f"line {end + 1}: close docs-test {kind} with `-->` on a line of its own")
    raise DirectiveError(f"line {start + 1}: docs-test {kind} is never closed with `-->`")


def _line_directive(number: int, kind: str, rest: str) -> str:
    """The value of a one-line directive: skip's reason, or "" for continue."""
    body = rest.strip()
    if not body.endswith("-->"):
        raise DirectiveError(f"line {number}: docs-test {kind} must be one line, ending with `-->`")
    body = body[:-3].strip()
    if kind == "skip":
        reason = re.fullmatch(r"\((.*\S.*)\)", body)
        if reason is None:
            raise DirectiveError(f"line {number}: write docs-test skip as `<!-- docs-test: skip (reason) -->`")
        return reason[1].strip()
    if kind == "continue" and not body:
        return ""
    raise DirectiveError(f"line {number}: unknown docs-test directive `{kind}{' ' + body if body else ''}`")


def parse_page(text: str, path: Path) -> Page:
    """The python blocks of a Markdown text and the directives that apply to them."""
    page = Page(path)
    lines = text.splitlines(keepends=True)
    pending: dict[str, tuple[int, Piece | str]] = {}  # kind -> (line, code or reason), for the next block
    after_block = False  # nothing but blank lines since a python block closed

    def nothing_pending() -> None:
        for kind, (number, _) in pending.items():
            raise DirectiveError(f"line {number}: docs-test {kind} is not right before a python block")

    i = 0
    while i < len(lines):
        number = i + 1
        fence, directive = _FENCE.match(lines[i]), _DIRECTIVE.match(lines[i])
        if fence:
            end = _fence_end(lines, i, fence["fence"])
            if fence["info"].lower() in ("python", "py"):
                setup, skip = pending.get("setup", (0, None))[1], pending.get("skip", (0, None))[1]
                assert setup is None or isinstance(setup, Piece)
                page.blocks.append(Block(len(page.blocks), Piece(_dedent(lines[i + 1:end], fence["indent"]),
                                                                 number + 1),
                                         setup=setup, skip=None if skip is None else str(skip),
                                         continues="continue" in pending))
                pending.clear()
            nothing_pending()
            after_block = fence["info"].lower() in ("python", "py")
            i = end + 1
        elif directive:
            kind, rest = directive["kind"], directive["rest"]
            value: Piece | str
            if kind in _CODE_KINDS:
                value, end = _code_directive(lines, i, kind, rest)
            else:
                value, end = _line_directive(number, kind, rest), i
            if kind == "check":
                if not after_block:
                    raise DirectiveError(f"line {number}: docs-test check is not right after a python block")
                if page.blocks[-1].check is not None:
                    raise DirectiveError(f"line {number}: a second docs-test check for one block")
                assert isinstance(value, Piece)
                page.blocks[-1].check = value
            elif kind == "page-setup":
                if page.blocks or pending or page.setup is not None:
                    raise DirectiveError(f"line {number}: docs-test page-setup must come once, before the page's "
                                         f"first python block and its directives")
                assert isinstance(value, Piece)
                page.setup = value
            elif kind in pending:
                raise DirectiveError(f"line {number}: a second docs-test {kind} for one block")
            else:
                pending[kind] = (number, value)
            after_block = after_block and kind == "check"
            i = end + 1
        else:
            if lines[i].strip():
                nothing_pending()
                after_block = False
            i += 1
    nothing_pending()
    return page


def program(page: Page, block: Block) -> list[Piece]:
    """What runs for `block`, in order: the page setup, earlier blocks if it continues them, then it."""
    chain = page.blocks[: block.index + 1] if block.continues else [block]
    pieces = [page.setup] if page.setup is not None else []
    for part in chain:
        pieces += [p for p in (part.setup, part.code, part.check) if p is not None]
    return pieces


def imported_modules(code: str) -> set[str]:
    """The absolute module names a piece of code imports."""
    names: set[str] = set()
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return names  # the block runs, and its traceback points at the line
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def missing_framework(module: str) -> bool:
    """Whether `module` belongs to an optional framework that is not installed here.

    Only the top-level package is looked up, without importing it (importing crewai here would
    cost seconds and start its telemetry in the test process). Anything else that is missing (a
    misspelt or moved module, a package the docs should not need) is an error in the docs: the
    block runs, and fails on it.
    """
    top = module.partition(".")[0]
    return top in OPTIONAL_FRAMEWORKS and importlib.util.find_spec(top) is None


def _cases() -> list[object]:
    cases: list[object] = []
    for path in PAGES:
        rel = path.relative_to(ROOT).as_posix()
        try:
            page = parse_page(path.read_text(encoding="utf-8"), path)
        except DirectiveError as exc:
            cases.append(pytest.param(path, None, str(exc), id=f"{rel}-directives"))
            continue
        cases += [pytest.param(path, page, block.index, id=f"{rel}-block{block.index}") for block in page.blocks]
    return cases


CASES = _cases()
Started = dict[str, Future[str | None]]

# The child's preamble: a socket guard and a listener on keito-instrument's never-into-the-host
# guard, both reported from an exit handler registered before keito_instrument is imported (so it
# runs after keito's own, which end open sessions), then the pieces, in one `__main__` module.
DRIVER = r"""
import ast, asyncio, atexit, builtins, json, os, socket, sys, types

_problems = []


def _report():
    if _problems:
        sys.stdout.flush()
        print("\n".join(["", "docs-test:", *_problems]), file=sys.stderr)
        sys.stderr.flush()
        os._exit(3)


atexit.register(_report)

_LOOPBACK_NAMES = {"localhost", "", "0.0.0.0", "::", "::1"}


def _loopback(host):
    text = host.decode() if isinstance(host, bytes) else str(host)
    return text in _LOOPBACK_NAMES or text.startswith("127.")


def _refused(what):
    _problems.append(f"tried to reach beyond loopback: {what!r}")
    return ConnectionRefusedError(f"docs-test: no network beyond loopback ({what!r})")


_real_connect, _real_connect_ex = socket.socket.connect, socket.socket.connect_ex
_real_getaddrinfo = socket.getaddrinfo


def _connect(self, address):
    if isinstance(address, tuple) and address and not _loopback(address[0]):
        raise _refused(address)
    return _real_connect(self, address)


def _connect_ex(self, address):
    if isinstance(address, tuple) and address and not _loopback(address[0]):
        raise _refused(address)
    return _real_connect_ex(self, address)


def _getaddrinfo(host, *args, **kwargs):
    if host is not None and not _loopback(host):
        raise socket.gaierror(str(_refused(host)))
    return _real_getaddrinfo(host, *args, **kwargs)


socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = _connect, _connect_ex, _getaddrinfo

from keito_instrument import _guard

_guard.add_swallow_listener(
    lambda kind, exc: _problems.append(f"keito-instrument swallowed an internal error in {kind}: {exc!r}")
)

_main = types.ModuleType("__main__")
_main.__builtins__ = builtins
sys.modules["__main__"] = _main
with open(sys.argv[1], encoding="utf-8") as _f:
    _payload = json.load(_f)
for _piece in _payload["pieces"]:
    _code = compile("\n" * (_piece["line"] - 1) + _piece["code"], _payload["file"], "exec",
                    flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)
    if _code.co_flags & 0x80:  # CO_COROUTINE: top-level await
        asyncio.run(eval(_code, _main.__dict__))
    else:
        exec(_code, _main.__dict__)
"""


def _env(tmp: Path) -> dict[str, str]:
    """The block's environment: this one's, less anything of Keito's, OpenTelemetry's, CrewAI's and pytest's."""
    drop = ("KEITO_", "OTEL_", "CREWAI_", "PYTEST_")
    env = {name: value for name, value in os.environ.items() if not name.startswith(drop)}
    env.update(
        KEITO_LEDGER=str(tmp / "ledger.sqlite3"),
        KEITO_BASE_URL="http://127.0.0.1:9",  # discard port: refused, should anything be delivered
        CREWAI_DISABLE_TELEMETRY="true",
        CREWAI_TRACING_ENABLED="false",
        CREWAI_DISABLE_VERSION_CHECK="true",
        CREWAI_TESTING="true",
        OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9",
        HOME=str(tmp),
        XDG_DATA_HOME=str(tmp / "data"),
        XDG_CONFIG_HOME=str(tmp / "config"),
        XDG_CACHE_HOME=str(tmp / "cache"),
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )
    return env


def plan(page: Page, block: Block) -> tuple[str | None, list[Piece]]:
    """Why `block` is skipped (None: it runs), and the pieces it runs."""
    if block.skip is not None:
        return f"docs-test: skip ({block.skip})", []
    chain = page.blocks[: block.index + 1] if block.continues else [block]
    if any(part.skip is not None for part in chain):
        return "docs-test: it continues a block that is skipped", []
    pieces = program(page, block)
    modules = set().union(*(imported_modules(piece.code) for piece in pieces))
    missing = sorted({m.partition(".")[0] for m in modules if missing_framework(m)})
    if missing:
        return f"needs {', '.join(missing)} (not installed)", []
    return None, pieces


def run_block(path: Path, pieces: list[Piece], tmp: Path, env: dict[str, str] | None = None,
              timeout: float = TIMEOUT) -> str | None:
    """Run the pieces in a fresh interpreter, in `tmp`; what went wrong, or None."""
    payload = tmp / "docs_block.json"
    payload.write_text(json.dumps({"file": str(path), "pieces": [p.__dict__ for p in pieces]}), encoding="utf-8")
    try:
        result = subprocess.run([sys.executable, "-c", DRIVER, str(payload)], capture_output=True, text=True,
                                env=env or _env(tmp), cwd=tmp, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
        return f"still running after {timeout:.0f} s\n--- stderr ---\n{stderr[-8000:]}"
    if result.returncode == 0:
        return None
    return (f"exited {result.returncode}\n--- stdout ---\n{result.stdout[-4000:]}\n"
            f"--- stderr ---\n{result.stderr[-8000:]}")


@pytest.fixture(scope="module")
def started(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Started]:
    """The selected blocks' processes, started ahead `JOBS` at a time: most of a block's time is
    its framework's import (about 4 s for crewai), so the tests mostly wait for them in parallel."""
    pool = ThreadPoolExecutor(max_workers=JOBS, thread_name_prefix="docs-test")
    futures: Started = {}
    for item in request.session.items:
        callspec = getattr(item, "callspec", None)
        if getattr(item, "function", None) is not test_doc_block or callspec is None:
            continue
        page, index = callspec.params["page"], callspec.params["index"]
        if isinstance(page, Page):
            reason, pieces = plan(page, page.blocks[index])
            if reason is None:  # the environment is read here: tests change it while the pool runs
                tmp = tmp_path_factory.mktemp("docs")
                futures[item.nodeid] = pool.submit(run_block, page.path, pieces, tmp, _env(tmp))
    yield futures
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.parametrize(("path", "page", "index"), CASES)
def test_doc_block(path: Path, page: Page | None, index: int | str, started: Started,
                   request: pytest.FixtureRequest, tmp_path: Path) -> None:
    if page is None:
        pytest.fail(f"{path.relative_to(ROOT)}: {index}", pytrace=False)
    assert isinstance(index, int)
    block = page.blocks[index]
    reason, pieces = plan(page, block)
    if reason is not None:
        pytest.skip(reason)
    future = started.get(request.node.nodeid)
    problem = future.result() if future is not None else run_block(path, pieces, tmp_path)
    if problem is not None:
        pytest.fail(f"{path.relative_to(ROOT)}, python block {index} (line {block.code.line}): {problem}",
                    pytrace=False)


# -- the directive parser itself -----------------------------------------------------------------

SAMPLE = """\
<!-- docs-test: page-setup
import math
-->
# Title

```python
x = math.pi
```
<!-- docs-test: check
assert x > 3
-->

```bash
echo not python
```

<!-- docs-test: setup
y = 2
-->
```python
z = x * y
```

<!-- docs-test: continue -->
```py
print(z)
```

<!-- docs-test: skip (shown, not run) -->
```python
import nowhere
```
"""


def test_parse_page_attaches_directives() -> None:
    page = parse_page(SAMPLE, Path("sample.md"))
    assert [b.code.code for b in page.blocks] == ["x = math.pi\n", "z = x * y\n", "print(z)\n", "import nowhere\n"]
    assert page.setup == Piece("import math\n", 2)
    first, second, third, fourth = page.blocks
    assert first.code.line == 7 and first.check == Piece("assert x > 3\n", 10)
    assert second.setup == Piece("y = 2\n", 18) and second.check is None and not second.continues
    assert third.continues and fourth.skip == "shown, not run"
    assert [p.code for p in program(page, third)] == [
        "import math\n", "x = math.pi\n", "assert x > 3\n", "y = 2\n", "z = x * y\n", "print(z)\n"
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<!-- docs-test: setup\nx = 1\n-->\nSome prose.\n```python\nx\n```\n", "not right before"),
        ("<!-- docs-test: setup\nx = 1\n-->\n```bash\nls\n```\n", "not right before"),
        ("Prose.\n<!-- docs-test: check\nx\n-->\n", "not right after"),
        ("```python\nx = 1\n```\n<!-- docs-test: page-setup\nx\n-->\n", "page-setup"),
        ("<!-- docs-test: skip -->\n```python\nx\n```\n", "skip (reason)"),
        ("<!-- docs-test: sktip (typo) -->\n```python\nx\n```\n", "unknown docs-test directive"),
        ("<!-- docs-test: setup\nx = 1\n```python\nx\n```\n", "never closed"),
        ("<!-- docs-test: continue -->\n", "not right before"),
        ("```python\nx\n```\n<!-- docs-test: setup\n-->\n<!-- docs-test: check\n-->\n", "not right after"),
        ("<!-- docs-test: setup\n-->\n<!-- docs-test: setup\n-->\n```python\nx\n```\n", "a second docs-test setup"),
        ("<!-- docs-test: setup x = 1\n-->\n```python\nx\n```\n", "on the lines after"),
    ],
)
def test_parse_page_rejects_misplaced_directives(text: str, message: str) -> None:
    with pytest.raises(DirectiveError, match=re.escape(message)):
        parse_page(text, Path("sample.md"))


def test_every_page_has_been_read() -> None:
    assert any(isinstance(case.values[1], Page) and case.values[1].blocks  # type: ignore[attr-defined]
               for case in CASES)
    assert (ROOT / "README.md") in PAGES and (ROOT / "docs" / "integrations" / "crewai.md") in PAGES


def test_only_optional_frameworks_are_skipped() -> None:
    installed = importlib.util.find_spec("crewai") is not None
    assert missing_framework("crewai.events") is not installed
    assert not missing_framework("crewai_typo")  # not a framework we know: the block runs and fails
    assert not missing_framework("keito_instrument.integration")
    assert not missing_framework("email.no_such_submodule")  # an installed package without it: fails


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("x = 1\nraise RuntimeError('boom')\n", ['sample.md", line 5', "RuntimeError: boom"]),
        ("import keito_instrument as keito\nkeito.record_llm_call('gpt-4o', tokens=5)\n",
         ["swallowed an internal error in record_llm_call", "TypeError"]),
        ("import socket\ntry:\n    socket.socket().connect(('192.0.2.1', 443))\nexcept OSError:\n    pass\n",
         ["tried to reach beyond loopback: ('192.0.2.1', 443)"]),
        ("import urllib.request\ntry:\n    urllib.request.urlopen('http://example.com', timeout=1)\nexcept OSError:\n"
         "    pass\n", ["tried to reach beyond loopback: 'example.com'"]),
    ],
    ids=["exception", "swallowed-error", "connect", "name-lookup"],
)
def test_a_block_fails_on(code: str, expected: list[str], tmp_path: Path) -> None:
    path = tmp_path / "sample.md"
    path.write_text(f"# Sample\n\n```python\n{code}```\n")
    page = parse_page(path.read_text(), path)
    problem = run_block(path, program(page, page.blocks[0]), tmp_path)
    assert problem is not None
    for text in expected:
        assert text in problem


def test_top_level_await_keeps_module_globals(tmp_path: Path) -> None:
    path = tmp_path / "sample.md"
    path.write_text("```python\nimport asyncio\nawait asyncio.sleep(0)\nx = 2\n```\n"
                    "<!-- docs-test: check\nassert x == 2 and __name__ == '__main__'\n-->\n")
    page = parse_page(path.read_text(), path)
    assert run_block(path, program(page, page.blocks[0]), tmp_path) is None


def test_a_block_that_hangs_is_stopped(tmp_path: Path) -> None:
    path = tmp_path / "sample.md"
    path.write_text("```python\nimport time\ntime.sleep(60)\n```\n")
    page = parse_page(path.read_text(), path)
    problem = run_block(path, program(page, page.blocks[0]), tmp_path, timeout=1.0)
    assert problem is not None and problem.startswith("still running after 1 s")
