"""A LangChain support agent billed to Keito: two turns of one conversation are one session.

Runs offline: the chat model is langchain-core's GenericFakeChatModel replaying replies that carry
token usage the way real providers report it, so no API key or network is needed.

    KEITO_LEDGER=/tmp/ledger.sqlite3 python examples/langchain_agent.py

With KEITO_API_KEY / KEITO_ACCOUNT_ID set, the session's time entry and LLM expense are sent to
Keito; without them they stay in the local ledger (`keito-instrument status` shows it).
"""

from __future__ import annotations

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.runnables import RunnableConfig, RunnableLambda
from langchain_core.tools import tool

import keito_instrument as keito
from keito_instrument.integrations.langchain import KeitoCallbackHandler

CONVERSATION = "ticket-1042"


@tool
def lookup_order(order_id: str) -> str:
    """Look up the shipping status of an order."""
    return f"Order {order_id}: shipped on 2026-11-20, arriving 2026-11-24."


def fake_reply(content: str, inp: int, out: int, tool_order: str | None = None) -> AIMessage:
    """A reply as a provider integration returns it: model name and token usage attached."""
    calls = [{"name": "lookup_order", "args": {"order_id": tool_order}, "id": "call_1", "type": "tool_call"}]
    return AIMessage(
        content=content,
        tool_calls=calls if tool_order else [],
        response_metadata={"model_name": "gpt-4o-mini"},
        usage_metadata={
            "input_tokens": inp,
            "output_tokens": out,
            "total_tokens": inp + out,
            "input_token_details": {"cache_read": inp // 2},
        },
    )


llm = GenericFakeChatModel(
    messages=iter(
        [
            fake_reply("", 412, 18, tool_order="A-981"),  # turn 1: the model asks for the tool
            fake_reply("Your order A-981 shipped and arrives on Monday.", 488, 21),
            fake_reply("You're welcome! Anything else?", 530, 9),  # turn 2
        ]
    )
)


def support_agent(history: list[BaseMessage], config: RunnableConfig) -> list[BaseMessage]:
    """One turn: call the model, run the tools it asks for, until it answers."""
    messages = list(history)
    reply = llm.invoke(messages, config=config)
    while isinstance(reply, AIMessage) and reply.tool_calls:
        messages.append(reply)
        messages.extend(lookup_order.invoke(call, config=config) for call in reply.tool_calls)
        reply = llm.invoke(messages, config=config)
    return [*messages, reply]


def main() -> None:
    agent = RunnableLambda(support_agent).with_config(run_name="support_agent")
    handler = KeitoCallbackHandler(agent_id="support-bot", project_id="proj-support", task_id="task-tier1")
    # The conversation id in the run metadata makes both turns one session (it stays open between
    # turns until idle_timeout, or until we end it explicitly below).
    config: RunnableConfig = {"callbacks": [handler], "metadata": {"session_id": CONVERSATION}}

    history: list[BaseMessage] = [SystemMessage("You are a helpful support agent.")]
    for question in ("Where is my order A-981?", "Thanks!"):
        history = agent.invoke([*history, HumanMessage(question)], config=config)
        print(f"user: {question}\nagent: {history[-1].content}")

    session = keito.get_session(CONVERSATION)
    assert session is not None, "the conversation's session should be open"
    tokens = sum(u.input_tokens + u.output_tokens for u in session.usage())
    print(
        f"session {session.session_id}: {session.llm_calls} LLM calls, {session.tool_calls} tool call(s), "
        f"{tokens} tokens"
    )
    keito.end_session(CONVERSATION)  # the conversation is over: write its time entry and expense
    keito.shutdown(timeout=5.0)


if __name__ == "__main__":
    main()
