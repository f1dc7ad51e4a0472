"""Cut the response schemas the gateway answers with out of OpenAI's own OpenAPI spec.

The spec (github.com/openai/openai-openapi, MIT) is 3.4 MB; the tests need a few dozen of its
component schemas, with everything they reference (the Responses API's response object
references every output item type, hence most of the file).  This writes that closure, as JSON Schema
2020-12 (the spec's ``nullable: true``, an OpenAPI 3.0 keyword it still uses, becomes a union
with ``null``), to ``tests/gateway/api/spec/openai-responses.json`` with the spec's commit.

    git clone https://github.com/openai/openai-openapi /tmp/openai-openapi
    .venv/bin/python tools/openai_spec.py /tmp/openai-openapi/openapi.json --commit <sha>
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "tests" / "gateway" / "api" / "spec" / "openai-responses.json"
ROOTS = (
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "CreateCompletionResponse",
    "ListModelsResponse",
    "Model",
    "ErrorResponse",
    # The Responses API: the response object and the stream events the gateway writes.
    "Response",
    "ResponseCreatedEvent",
    "ResponseInProgressEvent",
    "ResponseOutputItemAddedEvent",
    "ResponseContentPartAddedEvent",
    "ResponseTextDeltaEvent",
    "ResponseTextDoneEvent",
    "ResponseContentPartDoneEvent",
    "ResponseFunctionCallArgumentsDeltaEvent",
    "ResponseFunctionCallArgumentsDoneEvent",
    "ResponseOutputItemDoneEvent",
    "ResponseCompletedEvent",
    "ResponseIncompleteEvent",
    "ResponseFailedEvent",
    "ResponseErrorEvent",
)
PREFIX = "#/components/schemas/"


def _refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"][len(PREFIX) :]} if isinstance(node.get("$ref"), str) else set()
        for value in node.values():
            found |= _refs(value)
        return found
    if isinstance(node, list):
        return set().union(*(_refs(v) for v in node)) if node else set()
    return set()


def _nullable(node: Any) -> Any:
    """``{"type": T, "nullable": true}`` -> ``{"type": [T, "null"]}``; a nullable ``$ref`` or
    untyped schema -> ``{"anyOf": [schema, {"type": "null"}]}``; an enum also admits null."""
    if isinstance(node, list):
        return [_nullable(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _nullable(v) for k, v in node.items() if k != "nullable"}
    if not node.get("nullable"):
        return out
    if "enum" in out and None not in out["enum"]:
        out["enum"] = [*out["enum"], None]
    kind = out.get("type")
    if isinstance(kind, str):
        out["type"] = [kind, "null"]
        return out
    return {"anyOf": [out, {"type": "null"}]}


def closure(schemas: dict[str, Any], roots: tuple[str, ...] = ROOTS) -> dict[str, Any]:
    wanted, todo = set(), list(roots)
    while todo:
        name = todo.pop()
        if name not in wanted:
            wanted.add(name)
            todo.extend(_refs(schemas[name]) - wanted)
    return {name: _nullable(schemas[name]) for name in sorted(wanted)}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("spec", type=Path, help="openapi.json from openai/openai-openapi")
    parser.add_argument("--commit", required=True, help="the spec repository's commit")
    args = parser.parse_args()
    spec = json.loads(args.spec.read_text())
    document = {
        "source": "https://github.com/openai/openai-openapi (MIT), openapi.json",
        "commit": args.commit,
        "generated_by": "tools/openai_spec.py",
        "components": {"schemas": closure(spec["components"]["schemas"])},
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")
    print(f"{OUT.relative_to(REPO)}: {len(document['components']['schemas'])} schemas")


if __name__ == "__main__":
    main()
