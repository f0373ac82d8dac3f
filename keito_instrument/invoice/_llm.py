"""One LLM expense's billed amount, split per model.

An expense bills a session's (or roll-up's) LLM cost as one `total_cost`, in the workspace
currency, with the exchange rate and `cost_multiplier` applied and rounded as Keito received it.
That number is what the invoice re-bills. Its metadata names the models: `model` (the one with
the most tokens) and, when there were several, `models.<model>.cost_usd` / `.input_tokens` /
`.output_tokens`. The billed amount is shared between the models in proportion to their USD cost,
the last model taking the remainder, so the shares always add up to the expense exactly.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

_PREFIX = "models."
_FIELDS = ("cost_usd", "input_tokens", "output_tokens")

Share = tuple[str, Decimal, tuple[int, int]]  # (model, billed amount, (input tokens, output tokens))


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _cost(value: Any) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        return None
    return number if number.is_finite() and number >= 0 else None


def per_model(meta: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The `models.<model>.<field>` keys of an expense's metadata, per model (model names may
    contain dots: the field is the last part, the model everything between)."""
    models: dict[str, dict[str, Any]] = {}
    for key, value in meta.items():
        if not key.startswith(_PREFIX):
            continue
        model, _, name = key[len(_PREFIX):].rpartition(".")
        if model and name in _FIELDS:
            models.setdefault(model, {})[name] = value
    return models


def llm_shares(billed: Decimal, meta: dict[str, Any]) -> list[Share]:
    """The billed amount of one expense per model (see the module docstring).

    Falls back to the expense's primary `model` when the per-model breakdown is missing or
    incomplete (metadata is cut to 4 KB, dropping the breakdown first).
    """
    whole: Share = (str(meta.get("model") or "(unknown model)"), billed,
                    (_int(meta.get("input_tokens")), _int(meta.get("output_tokens"))))
    models = per_model(meta)
    if len(models) < 2:
        return [whole]
    costs = {model: _cost(fields.get("cost_usd")) for model, fields in models.items()}
    complete = all(cost is not None for cost in costs.values()) and sum(
        _int(fields.get("input_tokens")) for fields in models.values()) == whole[2][0]
    total = sum((cost for cost in costs.values() if cost is not None), Decimal(0))
    if not complete or total <= 0:
        return [whole]
    order = sorted(models, key=lambda m: (-(costs[m] or Decimal(0)), m))
    shares: list[Share] = []
    left = billed
    for index, model in enumerate(order):
        share = left if index == len(order) - 1 else billed * (costs[model] or Decimal(0)) / total
        left -= share
        fields = models[model]
        shares.append((model, share, (_int(fields.get("input_tokens")), _int(fields.get("output_tokens")))))
    return shares
