"""Per-row logits processing for the embedded engine, built from transformers' own processors.

A row asks for any of: ``repetition_penalty`` (transformers' RepetitionPenaltyLogitsProcessor,
over prompt and output like vLLM's), ``logit_bias`` (SequenceBiasLogitsProcessor),
``min_tokens`` (MinNewTokensLengthLogitsProcessor), ``top_k`` and ``min_p`` (TopKLogitsWarper,
MinPLogitsWarper, applied after the temperature as vLLM does), and OpenAI's ``presence_penalty``
and ``frequency_penalty`` (:class:`OutputPenalties`: transformers has no processor for these).
Rows that ask for none of them get no :class:`RowLogits` at all, so a batch of plain rows
decodes exactly as before.  Each row's processors run on that row's logits only, which keeps
rows with different settings correct in one mixed batch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    MinNewTokensLengthLogitsProcessor,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    SequenceBiasLogitsProcessor,
    TopKLogitsWarper,
)

from gateway.core.errors import InvalidRequest
from gateway.engine.base import SamplingParams


class OutputPenalties(LogitsProcessor):
    """OpenAI's presence and frequency penalties: subtract ``presence`` from every token that
    appears in the output so far and ``frequency`` times its count, counting generated tokens
    only (vLLM's definition)."""

    def __init__(self, presence: float, frequency: float, prompt_length: int) -> None:
        self.presence = presence
        self.frequency = frequency
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        generated = input_ids[:, self.prompt_length :]
        if generated.shape[1] == 0:
            return scores
        ones = torch.ones(generated.shape, dtype=scores.dtype, device=scores.device)
        counts = torch.zeros_like(scores).scatter_add_(1, generated, ones)
        penalized: torch.Tensor = (
            scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)
        )
        return penalized


@dataclass(frozen=True)
class RowLogits:
    """One row's processors: ``processors`` on the raw logits, ``warpers`` after temperature."""

    processors: LogitsProcessorList
    warpers: LogitsProcessorList

    def process(
        self, prompt_ids: list[int], token_ids: list[int], logits: torch.Tensor
    ) -> torch.Tensor:
        """``logits`` (one row, the vocabulary) with the processors applied."""
        # transformers annotates input_ids as the legacy LongTensor type; a long tensor is one.
        input_ids = cast(
            torch.LongTensor, torch.tensor([prompt_ids + token_ids], device=logits.device)
        )
        out: torch.Tensor = self.processors(input_ids, logits.unsqueeze(0))
        return out[0]

    def warp(self, scaled: torch.Tensor) -> torch.Tensor:
        """Temperature-scaled logits of one row with top-k and min-p applied (masked to -inf)."""
        # The warpers read only the scores; they take input_ids to fit the processor call.
        no_ids = cast(torch.LongTensor, torch.empty((1, 0), dtype=torch.long, device=scaled.device))
        out: torch.Tensor = self.warpers(no_ids, scaled.unsqueeze(0))
        return out[0]


def row_logits(
    sampling: SamplingParams,
    *,
    prompt_length: int,
    eos_ids: Iterable[int],
    vocab_size: int,
    device: torch.device,
) -> RowLogits | None:
    """The processors ``sampling`` asks for, or None when it asks for none.

    Raises InvalidRequest (param ``logit_bias``) for a token id outside the vocabulary.
    """
    processors = LogitsProcessorList()
    if sampling.logit_bias:
        outside = [token for token, _ in sampling.logit_bias if token >= vocab_size]
        if outside:
            raise InvalidRequest(
                f"logit_bias names token ids outside this model's vocabulary of {vocab_size} "
                f"tokens: {outside[:5]}",
                param="logit_bias",
                code="invalid_value",
            )
        processors.append(
            SequenceBiasLogitsProcessor(
                [[[token], float(bias)] for token, bias in sampling.logit_bias]
            )
        )
    if sampling.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(float(sampling.repetition_penalty)))
    if sampling.presence_penalty or sampling.frequency_penalty:
        processors.append(
            OutputPenalties(sampling.presence_penalty, sampling.frequency_penalty, prompt_length)
        )
    if sampling.min_tokens:
        eos = sorted(eos_ids)
        if eos:
            processors.append(
                MinNewTokensLengthLogitsProcessor(
                    prompt_length, sampling.min_tokens, eos, device=str(device)
                )
            )
    warpers = LogitsProcessorList()
    if sampling.top_k > 0:
        warpers.append(TopKLogitsWarper(sampling.top_k))
    if sampling.min_p > 0.0:
        warpers.append(MinPLogitsWarper(sampling.min_p))
    if not processors and not warpers:
        return None
    return RowLogits(processors, warpers)
