"""What each engine can serve, known without building (or importing) the engine.

Domains and services ask these instead of reading ``settings.engine`` themselves: the gateway
checks requests against them, adapter registration refuses a DoRA adapter for an engine that
cannot serve it, and the docs' table (docs/api.md) lists the same sets.
"""

from __future__ import annotations

from typing import Literal

from gateway.engine.base import Capabilities

# The sampling controls beyond OpenAI's basics that both engines honour (vLLM natively, the
# embedded engine as logits processors, gateway/engine/embedded_logits.py).
SAMPLING_EXTRAS = frozenset(
    {
        "top_k",
        "min_p",
        "repetition_penalty",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "min_tokens",
    }
)


# embedded_logits implements the sampling extras; embedded_grammar (llguidance) enforces
# response_format and tool calls (tools, tool_choice; parallel_tool_calls rides with tools);
# n runs one row per choice, and logprobs/top_logprobs come from each step's logits.  Still
# refused by name: echo, lists of prompts, best_of, suffix, the chat-template extras.  PEFT
# serves DoRA adapters.
EMBEDDED = Capabilities(
    "embedded",
    SAMPLING_EXTRAS | {"response_format", "tools", "tool_choice", "n", "logprobs", "top_logprobs"},
    dora=True,
)

# `flywheel engine local` (api/engine_server.py) runs the embedded engine behind vLLM's API,
# but its answers carry one choice of plain text: it refuses the rest by name.
EMBEDDED_LOCAL = Capabilities("embedded", SAMPLING_EXTRAS, dora=True)

# What vllm.upstream_body passes through, checked against vLLM's entrypoints/openai protocol
# (ChatCompletionRequest, CompletionRequest) and SamplingParams: vLLM honours each of these and
# validates their values itself (a 400 relayed with its message); vllm_client.relay reads back
# what they add to the answer (several choices, logprobs, tool-call deltas, the echoed prompt)
# and responses.Shape writes it in OpenAI's shapes.  "prompt" stands for a list of prompts or
# token-id prompts.  response_format (json_object, json_schema) is enforced by vLLM's structured
# outputs, on its CPU build too (tests/e2e/test_vllm_cpu.py).  Tool calls with tool_choice
# "auto" need the replica started with a tool-call parser, and their arguments follow the
# tools' schemas only with --tool-strict-level parameter (or `strict: true` on each tool):
# `flywheel engine vllm` passes both.  Still refused: best_of (vLLM 0.32 has no such field),
# suffix (only for fill-in-the-middle models), the legacy functions/function_call.  vLLM's
# LoRA loader refuses DoRA ("vLLM does not yet support DoRA").
VLLM = Capabilities(
    "vLLM",
    SAMPLING_EXTRAS
    | {"response_format", "continue_final_message", "add_generation_prompt"}
    | {"n", "logprobs", "top_logprobs", "tools", "tool_choice", "echo", "prompt"},
)


def capabilities_for(engine: Literal["embedded", "vllm"] | str) -> Capabilities:
    """The capabilities of the engine ``FLYWHEEL_ENGINE`` names."""
    return VLLM if engine == "vllm" else EMBEDDED
