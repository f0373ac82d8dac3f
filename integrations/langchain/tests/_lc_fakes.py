"""Real langchain-core parts for the tests: a chat model that reports usage, and a fake OpenAI server.

`UsageChatModel` is a real `BaseChatModel`: it goes through langchain-core's invoke, stream, cache,
and callback machinery; only the provider round trip is replaced by canned replies that carry
`usage_metadata` the way provider integrations do (streaming: on the final chunk).

`FakeOpenAI` is a tiny OpenAI-compatible HTTP server on 127.0.0.1 (stdlib `http.server` in a
thread) so `langchain_openai.ChatOpenAI` runs its real request and response parsing.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.base import LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from pydantic import PrivateAttr


def usage(
    inp: int, out: int, *, cache_read: int = 0, cache_write: int = 0, reasoning: int = 0
) -> dict[str, Any]:
    """A langchain-core UsageMetadata dict (input includes cache, output includes reasoning)."""
    meta: dict[str, Any] = {"input_tokens": inp, "output_tokens": out, "total_tokens": inp + out}
    if cache_read or cache_write:
        meta["input_token_details"] = {"cache_read": cache_read, "cache_creation": cache_write}
    if reasoning:
        meta["output_token_details"] = {"reasoning": reasoning}
    return meta


def reply(
    content: str = "ok",
    *,
    model: str = "gpt-4o-mini",
    tool_calls: list[dict[str, Any]] | None = None,
    inp: int = 10,
    out: int = 5,
    cache_read: int = 0,
    cache_write: int = 0,
    reasoning: int = 0,
) -> AIMessage:
    """An AIMessage as a provider integration returns it: model name and usage attached."""
    return AIMessage(
        content=content,
        tool_calls=tool_calls or [],
        usage_metadata=usage(inp, out, cache_read=cache_read, cache_write=cache_write, reasoning=reasoning),
        response_metadata={"model_name": model},
    )


class UsageChatModel(BaseChatModel):
    """Replies with `replies` in turn (cycling). Streams words, then a final usage chunk."""

    replies: list[AIMessage]
    provider: str = "openai"
    stream_usage: bool = True
    fail_with: str | None = None
    _i: int = PrivateAttr(default=0)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @property
    def _llm_type(self) -> str:
        return "usage-fake-chat"

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = self.provider
        return params

    def _next(self) -> AIMessage:
        if self.fail_with is not None:
            raise RuntimeError(self.fail_with)
        with self._lock:
            message = self.replies[self._i % len(self.replies)].model_copy(deep=True)
            self._i += 1
        return message

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=self._next())])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: Any = None,
        **kwargs: Any,
    ) -> ChatResult:
        return self._generate(messages, stop)

    def _chunks(self) -> list[ChatGenerationChunk]:
        message = self._next()
        words = str(message.content).split(" ")
        chunks = [
            ChatGenerationChunk(message=AIMessageChunk(content=(w if i == 0 else " " + w)))
            for i, w in enumerate(words)
        ]
        if self.stream_usage:
            chunks.append(
                ChatGenerationChunk(
                    message=AIMessageChunk(
                        content="",
                        usage_metadata=message.usage_metadata,
                        response_metadata=dict(message.response_metadata),
                    )
                )
            )
        return chunks

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        for chunk in self._chunks():
            if run_manager is not None:
                run_manager.on_llm_new_token(str(chunk.message.content), chunk=chunk)
            yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        for chunk in self._chunks():
            if run_manager is not None:
                await run_manager.on_llm_new_token(str(chunk.message.content), chunk=chunk)
            yield chunk

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> Runnable[LanguageModelInput, AIMessage]:
        return self  # the canned replies already carry their tool calls


class EchoUsageModel(BaseChatModel):
    """Usage derived from the prompt: the last message's text is `n`, the call reports 100+n in, 1+n%7 out.

    Every call's usage says which request it served, so a call billed to the wrong session shows up.
    Its async path awaits between start and end, so concurrent calls really interleave; `peak` is the
    most calls that were open at once.
    """

    in_flight: int = 0
    peak: int = 0

    @property
    def _llm_type(self) -> str:
        return "echo-usage-fake-chat"

    @staticmethod
    def usage_for(n: int) -> tuple[int, int]:
        return 100 + n, 1 + n % 7

    def _reply(self, messages: list[BaseMessage]) -> ChatResult:
        inp, out = self.usage_for(int(str(messages[-1].content)))
        return ChatResult(generations=[ChatGeneration(message=reply(f"echo {inp}", inp=inp, out=out))])

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return self._reply(messages)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: Any = None,
        **kwargs: Any,
    ) -> ChatResult:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            for _ in range(3):
                await asyncio.sleep(0)  # let the other tasks' calls start and end in between
            return self._reply(messages)
        finally:
            self.in_flight -= 1


# -- a fake OpenAI-compatible server ------------------------------------------------------------
class FakeOpenAI:
    """Answers /v1/chat/completions like OpenAI (JSON, or SSE when `stream` is set)."""

    def __init__(
        self, prompt_tokens: int = 21, completion_tokens: int = 7, cached: int = 4, reasoning: int = 2
    ) -> None:
        self.prompt_tokens, self.completion_tokens = prompt_tokens, completion_tokens
        self.cached, self.reasoning = cached, reasoning
        self.requests: list[dict[str, Any]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
                fake.requests.append(body)
                if not self.path.endswith("/chat/completions"):
                    self.send_error(404)
                    return
                if body.get("stream"):
                    self._stream(body)
                else:
                    data = json.dumps(fake.completion(body)).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)

            def _stream(self, body: dict[str, Any]) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                for event in fake.stream_events(body):
                    self.wfile.write(b"data: " + json.dumps(event).encode() + b"\n\n")
                self.wfile.write(b"data: [DONE]\n\n")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def usage(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached},
            "completion_tokens_details": {"reasoning_tokens": self.reasoning},
        }

    def completion(self, body: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": body.get("model", "gpt-4o-mini"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hello there"},
                    "finish_reason": "stop",
                }
            ],
            "usage": self.usage(),
        }

    def stream_events(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        base = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": body.get("model", "gpt-4o-mini"),
        }
        events: list[dict[str, Any]] = [
            {
                **base,
                "choices": [
                    {"index": 0, "delta": {"role": "assistant", "content": word}, "finish_reason": None}
                ],
            }
            for word in ("Hello", " there")
        ]
        events.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append({**base, "choices": [], "usage": self.usage()})
        return events

    def __enter__(self) -> FakeOpenAI:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
