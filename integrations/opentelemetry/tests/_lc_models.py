"""Offline LangChain chat models for the tests that run OpenInference's LangChain instrumentor."""

from __future__ import annotations

from typing import Any

from langchain_core.language_models.base import LangSmithParams
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage


class FakeOpenAIChat(GenericFakeChatModel):
    """GenericFakeChatModel that names its model and provider the way ChatOpenAI does."""

    model_name: str = "gpt-4o-mini"

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = "openai"
        params["ls_model_name"] = self.model_name
        return params


def reply(inp: int, out: int, cache_read: int = 0, reasoning: int = 0, model: str = "gpt-4o-mini") -> AIMessage:
    """A model's answer carrying usage as a provider reports it."""
    meta: dict[str, Any] = {
        "input_tokens": inp,
        "output_tokens": out,
        "total_tokens": inp + out,
        "input_token_details": {"cache_read": cache_read},
        "output_token_details": {"reasoning": reasoning},
    }
    return AIMessage(content="fine", usage_metadata=meta, response_metadata={"model_name": model})
