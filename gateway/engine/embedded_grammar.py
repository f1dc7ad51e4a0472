"""Structured output on the embedded engine: JSON and tool calls decoded under a grammar.

``response_format`` (``json_object``, ``json_schema``) and tool calls (``tool_choice``
``"required"``, a named tool, ``"auto"``) become one llguidance grammar per request
(:func:`constraint_for`); each row gets its own matcher (:class:`RowGrammar`), which masks the
tokens the grammar forbids before the row samples and then takes in the token it sampled, so
rows with different constraints, or none, share a batch.

Why llguidance (docs/api.md has the longer comparison): it is a compiled (Rust) Earley parser
with a lexer, so JSON of any nesting is a grammar, not a regular-expression approximation
(outlines); a token mask over SmolLM2's 49,152 tokens takes ~35 µs here, computed outside the
GIL (lm-format-enforcer walks its token trie in Python); it is one 7.6 MB wheel with no
dependencies, and vLLM ships it as a structured-output backend too.  xgrammar, vLLM's default,
was the first choice, but its x86-64 Linux wheel requires triton (286 MB download, 1 GB
installed) that only its CUDA kernel imports: on the CPU build this project installs, dead
weight larger than torch itself.

Tool calls use the Hermes format vLLM's ``hermes`` parser reads (``flywheel engine vllm``
starts replicas with it): ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``,
the arguments held to the tool's ``parameters`` schema.  ``embedded_tools`` turns that text
into OpenAI's tool-call pieces.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import llguidance
import llguidance.hf
import torch

from gateway.core.errors import InvalidRequest

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions

# Compact separators and no free whitespace: a small model allowed any whitespace inside JSON
# can spend its whole max_tokens on newlines (JSON mode's best-known failure); this still
# reads like json.dumps.  vLLM's flag for the same is --structured-outputs-config
# disable_any_whitespace.
JSON_STYLE: JsonCompileOptions = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
}

TOOL_OPEN = "<tool_call>"
TOOL_CLOSE = "</tool_call>"

# How a row's text becomes tool calls: "named" (the text is the arguments of one named tool),
# "tagged" (Hermes <tool_call> blocks, with text around them under "auto").
ToolMode = Literal["named", "tagged"]


@dataclass(frozen=True)
class Constraint:
    """What one request's output is held to: an llguidance grammar, and how to read it."""

    grammar: str
    param: str  # the request field it comes from, named in errors
    tools: ToolMode | None = None
    tool_name: str | None = None  # "named": the tool called
    text: bool = True  # "tagged": free text allowed around the calls ("auto")


def constraint_for(extra: dict[str, Any]) -> Constraint | None:
    """The constraint a request's ``response_format`` or tools ask for, or None.

    Raises InvalidRequest (with its ``param``) for what cannot be compiled or does not fit.
    """
    try:
        return _constraint_for(extra)
    except ValueError as exc:  # llguidance: a schema that is not a JSON object
        param = "response_format" if extra.get("response_format") is not None else "tools"
        raise InvalidRequest(
            f"the {param} cannot be enforced: {exc}", param=param, code="invalid_value"
        ) from exc


def _constraint_for(extra: dict[str, Any]) -> Constraint | None:
    tools = extra.get("tools") or []
    choice = extra.get("tool_choice", "auto" if tools else None)
    fmt = extra.get("response_format")
    calls = bool(tools) and choice != "none"
    if calls and fmt is not None:
        raise InvalidRequest(
            "response_format together with tools is not supported on the embedded engine: "
            "send one of them, or tool_choice 'none'.",
            param="response_format",
            code="unsupported_parameter",
        )
    if fmt is not None:
        return _response_format(fmt)
    if not calls:
        if choice not in (None, "none"):
            raise InvalidRequest(
                "tool_choice needs tools.", param="tool_choice", code="invalid_value"
            )
        return None
    functions = [_function(tool, i) for i, tool in enumerate(tools)]
    parallel = extra.get("parallel_tool_calls", True) is not False
    if choice == "required":
        return Constraint(_tagged(functions, text=False, parallel=parallel), "tools", "tagged")
    if choice == "auto":
        return Constraint(
            _tagged(functions, text=True, parallel=parallel), "tools", "tagged", text=True
        )
    name = _named(choice)
    function = next((f for f in functions if f["name"] == name), None)
    if function is None:
        raise InvalidRequest(
            f"tool_choice names the function {name!r}, which is not among the tools.",
            param="tool_choice",
            code="invalid_value",
        )
    schema = {**_parameters(function), "x-guidance": JSON_STYLE}
    grammar = llguidance.LLMatcher.grammar_from_json_schema(schema)
    return Constraint(grammar, "tool_choice", "named", tool_name=name)


def _response_format(fmt: dict[str, Any]) -> Constraint:
    if fmt.get("type") == "json_object":
        schema: dict[str, Any] = {"type": "object"}
    else:
        schema = (fmt.get("json_schema") or {}).get("schema") or {}
    if not isinstance(schema, dict):
        raise InvalidRequest(
            "response_format.json_schema.schema must be a JSON object.",
            param="response_format",
            code="invalid_value",
        )
    grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_STYLE)
    return Constraint(grammar, "response_format")


def _function(tool: Any, index: int) -> dict[str, Any]:
    function = tool.get("function") if isinstance(tool, dict) else None
    if (
        not isinstance(tool, dict)
        or tool.get("type", "function") != "function"
        or not isinstance(function, dict)
        or not isinstance(function.get("name"), str)
        or not function["name"]
    ):
        raise InvalidRequest(
            "each tool must be {'type': 'function', 'function': {'name': ..., 'parameters': "
            "{...}}}.",
            param=f"tools.{index}",
            code="invalid_value",
        )
    return function


def _parameters(function: dict[str, Any]) -> dict[str, Any]:
    parameters = function.get("parameters")
    if parameters is None:
        return {"type": "object"}
    if not isinstance(parameters, dict):
        raise InvalidRequest(
            f"the parameters of tool {function['name']!r} must be a JSON schema object.",
            param="tools",
            code="invalid_value",
        )
    return parameters


def _named(choice: Any) -> str:
    function = choice.get("function") if isinstance(choice, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise InvalidRequest(
            "tool_choice must be 'none', 'auto', 'required' or {'type': 'function', "
            "'function': {'name': ...}}.",
            param="tool_choice",
            code="invalid_value",
        )
    return str(function["name"])


def _tagged(functions: list[dict[str, Any]], *, text: bool, parallel: bool) -> str:
    """A Lark grammar (llguidance's dialect) for Hermes tool-call blocks.

    Each call is ``<tool_call>\\n`` + one function's ``{"name", "arguments"}`` JSON +
    ``\\n</tool_call>``.  ``text`` ("auto"): free text, and a call wherever ``<tool_call>``
    appears in it (a lazy lexeme, as llguidance's StructTag builds it: the text ends at the
    first trigger); else ("required") calls only, one or more.  ``parallel`` False: one call.
    """
    bodies = []
    for i, function in enumerate(functions):
        schema = {
            "type": "object",
            "properties": {"name": {"const": function["name"]}, "arguments": _parameters(function)},
            "required": ["name", "arguments"],
            "additionalProperties": False,
            "x-guidance": JSON_STYLE,
        }
        bodies.append(f"fn_{i}: %json {json.dumps(schema)}")
    alternatives = " | ".join(f"fn_{i}" for i in range(len(functions)))
    body = f'"\\n" ({alternatives}) "\\n{TOOL_CLOSE}"'
    if text:
        # One call ends the answer: text after it would be free to hold another <tool_call>.
        rules = [
            "start: call* TEXT" if parallel else "start: call | TEXT",
            "TEXT: /(.|\\n)*/",
            f"opener[lazy]: TEXT {json.dumps(TOOL_OPEN)}",
            f"call: opener {body}",
        ]
    else:
        rules = [
            'start: call ("\\n" call)*' if parallel else "start: call",
            f"call: {json.dumps(TOOL_OPEN)} {body}",
        ]
    return llguidance.LLMatcher.grammar_from_lark("\n".join(["%llguidance {}", *rules, *bodies]))


class Grammars:
    """Compiles constraints into matchers for one base model's tokenizer.

    llguidance's tokenizer is built on first use (about half a second for SmolLM2), from the
    Hugging Face tokenizer; ``vocab_size`` is the width of the model's logits, which may
    exceed the tokenizer's.
    """

    def __init__(self, tokenizer: Any, vocab_size: int, eos_ids: Iterable[int]) -> None:
        self._tokenizer = tokenizer
        self._vocab_size = vocab_size
        self._eos = sorted(eos_ids)
        self._ll: llguidance.LLTokenizer | None = None

    def matcher(self, constraint: Constraint) -> llguidance.LLMatcher:
        """A fresh matcher; InvalidRequest (the constraint's ``param``) if it cannot compile."""
        if self._ll is None:
            self._ll = llguidance.hf.from_tokenizer(
                self._tokenizer, n_vocab=self._vocab_size, eos_token=self._eos
            )
        error = llguidance.LLMatcher.validate_grammar(constraint.grammar, self._ll)
        if error:
            raise InvalidRequest(
                f"the {constraint.param} cannot be enforced: {error}",
                param=constraint.param,
                code="invalid_value",
            )
        # log_level 0: a matcher's errors are read and raised here, not printed to stderr.
        matcher = llguidance.LLMatcher(self._ll, constraint.grammar, log_level=0)
        if matcher.is_error():
            raise InvalidRequest(
                f"the {constraint.param} cannot be enforced: {matcher.get_error()}",
                param=constraint.param,
                code="invalid_value",
            )
        return matcher


class RowGrammar:
    """One row's matcher: masks what the grammar forbids, then takes in the sampled token.

    Used on the engine thread only.  The mask comes from ``compute_logit_bias`` (one byte per
    token, 0 where forbidden), which drops the GIL; once the grammar is complete only EOS is
    allowed, so the row ends there.
    """

    def __init__(self, matcher: llguidance.LLMatcher) -> None:
        self._matcher = matcher

    def mask(self, logits: torch.Tensor) -> None:
        """Set the forbidden tokens of one row's ``logits`` (the vocabulary) to -inf, in place."""
        allowed = torch.frombuffer(bytearray(self._matcher.compute_logit_bias()), dtype=torch.uint8)
        width = min(len(allowed), logits.shape[-1])
        forbidden = allowed[:width].to(logits.device) == 0
        logits[:width].masked_fill_(forbidden, float("-inf"))
        logits[width:] = float("-inf")

    def accept(self, token_id: int) -> None:
        """Advance past ``token_id``; RuntimeError if the grammar refuses it (a bug: the mask
        allowed it)."""
        if not self._matcher.consume_token(token_id):
            raise RuntimeError(f"the grammar refused token {token_id}: {self._matcher.get_error()}")

    @property
    def complete(self) -> bool:
        """The grammar is satisfied and takes nothing more (only EOS)."""
        return self._matcher.is_stopped()
