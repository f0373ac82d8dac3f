"""`KeitoCallbackHandler`: LangChain's callbacks mapped onto keito sessions (see the package docstring).

Threading contract: every hook runs inline on the caller's thread or event loop (`run_inline`),
does O(1) work without locks on the hot path, never blocks on I/O except the local ledger write
when a session ends, and never raises.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.outputs import LLMResult
from typing_extensions import override

from keito_instrument import get_settings
from keito_instrument.adapters import Run, Session, begin_run, current_session, end_run, guard

from ..._api import count_error
from .._kernel import (
    CLIENT_HOOKS,
    SESSION_OPTIONS,
    CallUsage,
    check_options,
    mark_framework_call,
    mark_framework_run,
    reset_mark,
)
from ._tree import Call, Nested, Root, end_root, log_forgotten, nested, open_runs
from ._usage import (
    add_raw_details,
    from_llm_output,
    from_usage_metadata,
    has_usage,
    marks_cache_hits,
    model_name,
    not_a_failure,
    replayed,
    session_id_from,
    stopped,
    with_overrides,
)

_EMPTY: Mapping[str, Any] = {}
_HANDLER_OPTIONS = (SESSION_OPTIONS - {"session_id"}) | {"idle_timeout"}
_Meta = Mapping[str, Any] | None

# One guard per kind of hook. Hooks call the guard's own protocol from an `except` clause
# (`_swallow`) rather than entering a `with` block: the same handling of an internal error (report
# it, swallow `Exception`, let `BaseException` through), at no cost on the happy path, which
# matters at a few microseconds per model call.
_G_START = guard("langchain run start")
_G_END = guard("langchain run end")
_G_LLM_END = guard("langchain on_llm_end")
_G_ERROR = guard("langchain run error")
_G_TOKEN = guard("langchain on_llm_new_token")

_table = open_runs()
# The table's own dict, read and written directly on the hot path (a method call per lookup is not
# free at a few microseconds per model call); the same dict for the life of the process.
_nodes = _table.entries


def _swallow(where: guard, exc: Exception) -> None:
    """Hand an internal error to the guard, exactly as leaving `with where:` with it would."""
    where.__exit__(type(exc), exc, exc.__traceback__)


class KeitoCallbackHandler(BaseCallbackHandler):
    """Bills LangChain runs: each root run is (part of) a keito session.

    Works in sync and async code, inline (no executor hop), for LCEL chains, tool-calling agents
    and LangGraph graphs; one instance can serve any number of threads and tasks:

        handler = KeitoCallbackHandler(project_id="p1", task_id="t1", agent_id="support-bot")
        chain.invoke(x, config={"callbacks": [handler]})

    Session, strongest first: this handler's `session_id`; the enclosing open keito session
    (`@track_agent`, `keito.session()`); the root run's metadata `keito_session_id`, `session_id`
    or `thread_id` (LangGraph copies `configurable.thread_id` there); else a new session per root
    run. A session named by run metadata stays open across turns until `idle_timeout` or
    `keito.end_session(id)`; the others end with their root run.

    Args:
        session_id: Bill every run of this handler into this session.
        close: "runs" (end with the last root run) or "idle" (stay open until idle_timeout);
            None picks "idle" for ids taken from run metadata and "runs" otherwise.
        **session_settings: project_id, task_id, expense_category_id, agent_id, agent_type,
            billable, notes, metadata, idle_timeout for the sessions this handler opens. Root-run
            metadata `keito_project_id`, `keito_task_id` and `keito_agent_id` override them.
    """

    run_inline = True  # called on the caller's thread / event loop: no executor hop, context intact
    raise_error = False
    # Plain class attributes instead of the base class's properties: LangChain reads one of these
    # for every event it dispatches to every handler, and an attribute is cheaper than a call.
    ignore_llm = False
    ignore_chat_model = False
    ignore_chain = False
    ignore_agent = False  # also gates tool events
    ignore_retriever = False
    ignore_retry = True  # retries are not billable events
    ignore_custom_event = True  # custom events carry nothing billable

    def __init__(self, session_id: str | None = None, *, close: str | None = None, **session_settings: Any):
        super().__init__()
        if close not in (None, "runs", "idle"):
            raise ValueError(f"close must be 'runs' or 'idle', got {close!r}")
        check_options("KeitoCallbackHandler()", session_settings, _HANDLER_OPTIONS)
        self.session_id = session_id
        self.close = close
        self.session_settings: dict[str, Any] = {k: v for k, v in session_settings.items() if v is not None}
        self.active = True

    # -- run tree -------------------------------------------------------------------------------
    def _start(self, run_id: UUID, parent_run_id: UUID | None, metadata: _Meta) -> Root | None:
        """Map a starting run to its root (opening the session's run for a root run)."""
        key = run_id.int
        if key in _nodes:
            return None  # already tracked: by another Keito handler on the same run, or a repeat
        if parent_run_id is not None:
            parent = _nodes.get(parent_run_id.int)
            if parent is not None:
                root = parent if type(parent) is Root else parent.root  # type: ignore[union-attr]
                swept = _table.add(key, nested(root) if CLIENT_HOOKS else root)
                if swept:
                    log_forgotten(swept)
                return root
        # No parent we know of: a true root, or the handler was attached to an inner runnable.
        opened = self._open(metadata)
        if opened is None:
            return None
        root = Root(self, opened[0], opened[1], key)
        try:
            swept = _table.add(key, root)
        except BaseException:
            end_run(root.run)  # untracked, it would never end: close it now
            raise
        if swept:
            log_forgotten(swept)
        if CLIENT_HOOKS:  # the span processor (and client hooks) leave this run's time and tools to us
            root.mark = mark_framework_run("langchain", root.session)
        return root

    def _open(self, metadata: _Meta) -> tuple[Session, Run | None] | None:
        """The session a root run bills to, and the keito run opened for it (None when joining)."""
        if not self.active:
            return None
        session_id = self.session_id
        if session_id is None:
            enclosing = current_session()
            if enclosing is not None:
                # Inside `@track_agent` / `keito.session()`: a nested run joins the open session
                # and opens no run of its own; the caller's run already covers its time.
                return None if get_settings().disabled else (enclosing, None)
            session_id = session_id_from(metadata)
        close = self.close or ("idle" if session_id is not None and self.session_id is None else "runs")
        options = with_overrides(self.session_settings, metadata)
        run = begin_run(session_id, close=close, framework="langchain", **options)
        return None if run is None else (run.session, run)

    def _finish(self, run_id: UUID, error: BaseException | None) -> None:
        key = run_id.int
        entry = _nodes.get(key)
        if entry is None:
            return
        root = entry if type(entry) is Root else entry.root  # type: ignore[union-attr]
        if root.owner is not self:
            return
        _nodes.pop(key, None)
        if error is not None and error is not root.last_error and not not_a_failure(error):
            root.last_error = error  # one exception bubbling through its ancestors counts once
            count_error(root.session, error)
        if root.key == key:
            end_root(root)
        elif type(entry) is Nested:
            reset_mark(entry.mark)

    # -- starts ---------------------------------------------------------------------------------
    @override
    def on_chain_start(
        self, serialized: Any, inputs: Any, *, run_id: UUID, parent_run_id: UUID | None = None,
        metadata: dict[str, Any] | None = None, **kwargs: Any,
    ) -> None:
        """Open or join the session on a root chain (a chain, an agent, a LangGraph graph)."""
        try:
            if parent_run_id is not None:
                parent = _nodes.get(parent_run_id.int)
                if parent is not None:
                    # The hot path, inlined: a nested chain maps to its root (idempotent if another
                    # Keito handler already mapped it: same parent, same root).
                    root = parent if type(parent) is Root else parent.root  # type: ignore[union-attr]
                    if not CLIENT_HOOKS:
                        _nodes[run_id.int] = root
                    elif run_id.int not in _nodes:  # (never over another handler's `Nested`)
                        _nodes[run_id.int] = nested(root)
                    if len(_nodes) > _table.max_open:
                        log_forgotten(_table.sweep())
                    return
            self._start(run_id, parent_run_id, metadata)
        except Exception as exc:
            _swallow(_G_START, exc)

    @override
    def on_chat_model_start(
        self, serialized: Any, messages: Any, *, run_id: UUID, parent_run_id: UUID | None = None,
        metadata: dict[str, Any] | None = None, **kwargs: Any,
    ) -> None:
        """Note a model call: its root, invocation params and run metadata (model, provider hints)."""
        try:
            key = run_id.int
            if key in _nodes:
                return  # already tracked by another Keito handler
            parent = _nodes.get(parent_run_id.int) if parent_run_id is not None else None
            if parent is not None:  # the hot path: a model call inside a chain, agent or graph
                root = parent if type(parent) is Root else parent.root  # type: ignore[union-attr]
                call = Call(root, metadata, kwargs.get("invocation_params"))
                swept = _table.add(key, call)
                if swept:
                    log_forgotten(swept)
                if CLIENT_HOOKS:  # an instrumented OpenAI/Anthropic client leaves the call to us
                    call.mark = mark_framework_call("langchain")
                return
            root_or_none = self._start(run_id, parent_run_id, metadata)  # a model called on its own
            if root_or_none is not None:
                call = _nodes[key] = Call(root_or_none, metadata, kwargs.get("invocation_params"))
                if CLIENT_HOOKS:
                    call.mark = mark_framework_call("langchain")
        except Exception as exc:
            _swallow(_G_START, exc)

    @override
    def on_llm_start(
        self, serialized: Any, prompts: Any, *, run_id: UUID, parent_run_id: UUID | None = None,
        metadata: dict[str, Any] | None = None, **kwargs: Any,
    ) -> None:
        """The same for text-completion LLMs."""
        self.on_chat_model_start(
            serialized, prompts, run_id=run_id, parent_run_id=parent_run_id, metadata=metadata, **kwargs
        )

    @override
    def on_tool_start(
        self, serialized: Any, input_str: Any, *, run_id: UUID, parent_run_id: UUID | None = None,
        metadata: dict[str, Any] | None = None, **kwargs: Any,
    ) -> None:
        """Count a tool call."""
        try:
            root = self._start(run_id, parent_run_id, metadata)
            if root is not None:
                root.session.record_tool_call()
        except Exception as exc:
            _swallow(_G_START, exc)

    @override
    def on_retriever_start(
        self, serialized: Any, query: Any, *, run_id: UUID, parent_run_id: UUID | None = None,
        metadata: dict[str, Any] | None = None, **kwargs: Any,
    ) -> None:
        """Track a retriever run (it may be a root run)."""
        try:
            self._start(run_id, parent_run_id, metadata)
        except Exception as exc:
            _swallow(_G_START, exc)

    # -- ends -----------------------------------------------------------------------------------
    @override
    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        """Count the model call once, with the usage the provider reported."""
        try:
            key = run_id.int
            call = _nodes.get(key)
            if type(call) is not Call or call.root.owner is not self:
                return
            try:
                self._record(call, response, run_id)
            finally:  # a bug in _record must not leave the run (and its session) open
                _nodes.pop(key, None)
                if call.mark is not None:
                    reset_mark(call.mark)
                if call.root.key == key:
                    end_root(call.root)
        except Exception as exc:
            _swallow(_G_LLM_END, exc)

    def _record(self, call: Call, response: LLMResult, run_id: UUID) -> None:
        # No call_id: the run table already counts a run once (its entry is gone after its end).
        usage: CallUsage | None = None
        response_meta: object = None
        generations = response.generations
        message = getattr(generations[0][0], "message", None) if generations and generations[0] else None
        if message is not None:
            response_meta = message.response_metadata
            usage_metadata = getattr(message, "usage_metadata", None)
            if usage_metadata:
                usage = from_usage_metadata(usage_metadata)
                if isinstance(response_meta, dict):  # (a provider's raw usage: web searches, say)
                    add_raw_details(usage, response_meta.get("usage"), response_meta.get("token_usage"))
                if not usage.cached and not (_marked[0] if _marked else _cache_marked()) and replayed(
                    message.id, str(run_id)
                ):
                    usage.cached = True
        if usage is None:
            usage = from_llm_output(response.llm_output)
        if usage is None:
            usage = CallUsage(missing=True)  # e.g. streaming without stream_usage: never silently 0
        meta = call.metadata or _EMPTY
        model = model_name(response_meta, response.llm_output, call.params) or meta.get("ls_model_name")
        graph_node = meta.get("langgraph_node")
        call.root.session.record_llm_call(
            model or "unknown",
            meta.get("ls_provider"),
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_read_tokens=usage.cache_read_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            reasoning_tokens=usage.reasoning_tokens,
            cached=usage.cached,
            usage_missing=usage.missing,
            breakdown={"node": graph_node} if graph_node else None,
            **(usage.details or _EMPTY),
        )

    @override
    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        """Close the run (and, for a root run, its interval in the session)."""
        try:
            key = run_id.int
            entry = _nodes.get(key)
            if entry is not None:
                root = entry if type(entry) is Root else entry.root  # type: ignore[union-attr]
                if root.owner is self:
                    _nodes.pop(key, None)
                    if root.key == key:
                        end_root(root)
                    elif type(entry) is Nested:
                        reset_mark(entry.mark)
        except Exception as exc:
            _swallow(_G_END, exc)

    @override
    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        """Close a tool run (which may be a root run)."""
        try:
            self._finish(run_id, None)
        except Exception as exc:
            _swallow(_G_END, exc)

    @override
    def on_retriever_end(self, documents: Any, *, run_id: UUID, **kwargs: Any) -> None:
        """Close a retriever run (which may be a root run)."""
        try:
            self._finish(run_id, None)
        except Exception as exc:
            _swallow(_G_END, exc)

    @override
    def on_llm_new_token(self, token: Any, *, run_id: UUID, **kwargs: Any) -> None:
        """Note that the call's output began (one dict lookup per token)."""
        try:
            call = _nodes.get(run_id.int)
            if type(call) is Call:
                call.streamed = True
        except Exception as exc:
            _swallow(_G_TOKEN, exc)

    # -- errors ---------------------------------------------------------------------------------
    @override
    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        """Count the error; bill the call if the provider reported usage with the failure.

        A call stopped by its consumer (a stream closed early, a cancelled task) is no error: the
        provider was called, so it is counted, with `usage_missing` unless usage came with it. So
        is a stream cut after its output began (the connection dropped before the usage chunk):
        the provider billed that request, so its cost is unknown, never zero.
        """
        try:
            call = _nodes.get(run_id.int)
            response = kwargs.get("response")
            if not isinstance(response, LLMResult):
                response = None
            try:
                if type(call) is Call and call.root.owner is self:
                    if response is not None and has_usage(response.generations, response.llm_output):
                        self._record(call, response, run_id)
                    elif stopped(error) or call.streamed:
                        self._record(call, LLMResult(generations=[]), run_id)
            finally:
                if type(call) is Call and call.root.owner is self and call.mark is not None:
                    reset_mark(call.mark)
                self._finish(run_id, error)
        except Exception as exc:
            _swallow(_G_ERROR, exc)

    def _on_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        """Count the error once (not once per ancestor it bubbles through); the session still bills."""
        try:
            self._finish(run_id, error)
        except Exception as exc:
            _swallow(_G_ERROR, exc)

    on_chain_error = on_tool_error = on_retriever_error = _on_error


_marked: list[bool] = []


def _cache_marked() -> bool:
    """Whether this langchain-core marks a cache hit's usage with `total_cost: 0` (checked once)."""
    if not _marked:
        from langchain_core.language_models.chat_models import BaseChatModel

        _marked.append(marks_cache_hits(getattr(BaseChatModel, "_convert_cached_generations", None)))
    return _marked[0]
