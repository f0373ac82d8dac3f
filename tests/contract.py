"""Validate payloads against Keito's published OpenAPI contract (../shared/contracts/keito-openapi-v2.yaml).

The contract is OpenAPI 3.0; its schemas are turned into JSON Schema (`nullable` -> a null type,
`$ref` -> the component) and checked with jsonschema, formats included. Tests that need it skip
only when the contract file is absent.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CANDIDATES = [
    Path(os.environ.get("KEITO_OPENAPI_CONTRACT", "/nonexistent")),
    ROOT.parent / "shared" / "contracts" / "keito-openapi-v2.yaml",
]
SCHEMAS = {"time_entry": "TimeEntryCreate", "outcome": "TimeEntryCreate", "expense": "ExpenseCreate"}


def contract_path() -> Path | None:
    """The contract file, or None when it is not beside the project."""
    return next((p for p in CANDIDATES if p.is_file()), None)


@functools.cache
def _components() -> dict[str, Any]:
    path = contract_path()
    if path is None:
        pytest.skip("Keito OpenAPI contract not found beside the project")
    spec = yaml.safe_load(path.read_text())
    components: dict[str, Any] = spec["components"]["schemas"]
    return components


def _to_json_schema(node: Any) -> Any:
    if isinstance(node, list):
        return [_to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        return _to_json_schema(_components()[node["$ref"].rsplit("/", 1)[1]])
    out = {k: _to_json_schema(v) for k, v in node.items() if k not in ("nullable", "example", "description")}
    if node.get("nullable"):
        if "type" in out:
            out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    return out


def schema_for(kind: str) -> dict[str, Any]:
    """JSON Schema of the create body a record of this kind is POSTed as."""
    schema: dict[str, Any] = _to_json_schema(_components()[SCHEMAS[kind]])
    return schema


def validate(kind: str, payload: dict[str, Any]) -> None:
    """Raise if the payload breaks the contract or the API's documented extra rules."""
    jsonschema.validate(payload, schema_for(kind), format_checker=jsonschema.FormatChecker())
    metadata = payload.get("metadata")
    assert isinstance(metadata, dict), "metadata must be a JSON object"
    assert len(json.dumps(metadata, separators=(",", ":"), ensure_ascii=False).encode()) <= 4096
    assert payload.get("source") == "agent"
    if kind == "expense":
        assert ("total_cost" in payload) != ("units" in payload), "exactly one of total_cost and units"
        if "units" in payload:
            assert isinstance(payload["units"], int) and payload["units"] >= 1
    else:
        assert 0 <= payload["hours"] <= 24
