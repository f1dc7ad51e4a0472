"""One row per generation, and the group of rows that share a forward pass and a KV cache.

Rows are left-padded so every row's newest token sits in the last column; the attention mask
hides the padding and the position ids count only real tokens, so a row's logits are the
same whether it runs alone or beside others (in float32; bfloat16 matmuls round differently
for other batch sizes).  The same alignment lets rows prefilled later join a group that is
already decoding (:meth:`Group.merge`): the shorter side is padded on the left.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from peft import PeftModel
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from gateway.engine.base import GenerationChunk, SamplingParams, TokenLogprob, TopLogprob
from gateway.engine.embedded_grammar import RowGrammar
from gateway.engine.embedded_logits import RowLogits
from gateway.engine.embedded_lora import BASE_ADAPTER, AdapterRouter
from gateway.engine.embedded_text import StreamText
from gateway.engine.embedded_tools import ToolCallReader

Emit = Callable[[GenerationChunk | BaseException], None]


@dataclass
class Totals:
    """One request's token counts, shared by its rows (one per choice with ``n`` > 1): every
    chunk carries the request's counts so far, as the vLLM relay's do."""

    prompt_tokens: int
    completion_tokens: int = 0


@dataclass(eq=False)
class Row:
    """A generation as the engine thread sees it; ``cancelled`` is set from the event loop."""

    request_id: str
    adapter: str | None
    prompt_ids: list[int]
    sampling: SamplingParams
    text: StreamText
    emit: Emit
    generator: torch.Generator | None
    logits: RowLogits | None = None  # penalties, logit_bias, min_tokens, top_k, min_p
    index: int = 0  # the choice this row answers (n > 1)
    totals: Totals | None = None  # shared by the request's rows; its own when None is given
    grammar: RowGrammar | None = None  # response_format or tool calls (embedded_grammar)
    tools: ToolCallReader | None = None  # reads tool calls out of the constrained text
    top_logprobs: int | None = None  # None: no logprobs asked; else how many alternatives
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    cancelled: bool = False
    _logprobs: list[TokenLogprob] = field(default_factory=list)  # not sent yet

    def __post_init__(self) -> None:
        if self.totals is None:
            self.totals = Totals(len(self.prompt_ids))

    def advance(
        self, token_id: int, eos_ids: frozenset[int], logprobs: torch.Tensor | None = None
    ) -> GenerationChunk | None:
        """Record one sampled token (``logprobs``: the row's log-softmax, when it asked for
        them); returns the chunk to send, if it completes any text or tool call.

        RuntimeError if the row's grammar refuses the token (the mask should have prevented it).
        """
        assert self.totals is not None
        self.token_ids.append(token_id)
        self.totals.completion_tokens += 1
        if token_id in eos_ids:
            self.finish_reason = "stop"
        else:
            if self.grammar is not None:
                self.grammar.accept(token_id)
            if logprobs is not None:
                self._logprobs.append(self._logprob(token_id, logprobs))
            # Like vLLM, stop strings count only once min_tokens are generated.
            self.text.push(token_id, match_stops=len(self.token_ids) >= self.sampling.min_tokens)
            if self.text.stopped or (self.grammar is not None and self.grammar.complete):
                self.finish_reason = "stop"
            elif len(self.token_ids) >= self.sampling.max_tokens:
                self.finish_reason = "length"
        final = self.finish_reason is not None
        delta = self.text.take(final=final)
        calls = None
        if self.tools is not None:
            delta, pieces = self.tools.feed(delta, final=final)
            calls = pieces or None
            if self.finish_reason == "stop" and self.tools.tagged_calls:
                self.finish_reason = "tool_calls"  # a named tool's answer stays "stop"
        if not final and not delta and not calls:
            return None
        logprobs_out = self._logprobs or None
        if logprobs_out is not None:
            self._logprobs = []
        # Running counts on every chunk: a stream cut short is still charged and logged for
        # what it generated.
        return GenerationChunk(
            text=delta,
            finish_reason=self.finish_reason,
            prompt_tokens=self.totals.prompt_tokens,
            completion_tokens=self.totals.completion_tokens,
            index=self.index,
            logprobs=logprobs_out,
            tool_calls=calls,
        )

    def _logprob(self, token_id: int, logprobs: torch.Tensor) -> TokenLogprob:
        top: tuple[TopLogprob, ...] = ()
        if self.top_logprobs:
            values, ids = logprobs.topk(self.top_logprobs)
            top = tuple(
                TopLogprob(self.text.token_text(i, special=True), v)
                for v, i in zip(values.tolist(), ids.tolist(), strict=True)
            )
        return TokenLogprob(self.text.token_text(token_id), float(logprobs[token_id]), top=top)


class Group:
    """Rows decoded together in one forward pass.

    ``dora_adapter`` is set for a group of rows that all use one DoRA adapter: PEFT refuses
    DoRA in mixed-adapter batches, so such a group runs with that adapter made active instead.
    """

    def __init__(
        self, rows: list[Row], *, dora_adapter: str | None, pad_id: int, router: AdapterRouter
    ) -> None:
        self.rows = rows
        self.dora_adapter = dora_adapter
        self._router = router
        self._pad_id = pad_id
        self._cache: DynamicCache | None = None
        self._attention_mask = torch.empty(0)
        self._next_position = torch.empty(0)

    def prefill(self, model: Any, device: torch.device) -> torch.Tensor:
        """Run the prompts; returns the next-token logits, one row per generation."""
        width = max(len(row.prompt_ids) for row in self.rows)
        input_ids = torch.full((len(self.rows), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(self.rows), width), dtype=torch.long)
        for i, row in enumerate(self.rows):
            input_ids[i, width - len(row.prompt_ids) :] = torch.tensor(row.prompt_ids)
            mask[i, width - len(row.prompt_ids) :] = 1
        self._attention_mask = mask.to(device)
        positions = (self._attention_mask.cumsum(-1) - 1).clamp(min=0)
        self._next_position = positions[:, -1:] + 1
        self._cache = DynamicCache(config=model.config)
        return self._forward(model, input_ids.to(device), positions)

    def decode(self, model: Any, device: torch.device) -> torch.Tensor:
        """Feed each row's last sampled token; returns the next-token logits."""
        last = torch.tensor([[row.token_ids[-1]] for row in self.rows], device=device)
        ones = torch.ones((len(self.rows), 1), dtype=torch.long, device=device)
        self._attention_mask = torch.cat([self._attention_mask, ones], dim=-1)
        positions = self._next_position
        self._next_position = positions + 1
        return self._forward(model, last, positions)

    def keep(self, keep: list[int]) -> None:
        """Drop every row whose index is not in ``keep`` (finished or cancelled)."""
        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in keep]
        if not keep or self._cache is None:
            return
        index = torch.tensor(keep, device=self._attention_mask.device)
        self._cache.batch_select_indices(index)
        self._attention_mask = self._attention_mask[index]
        self._next_position = self._next_position[index]
        self._trim()

    def can_merge(self, other: Group) -> bool:
        """True when ``other`` (prefilled, not decoded yet) can join this group's batch."""
        return (
            other.dora_adapter == self.dora_adapter
            and bool(self.rows)
            and bool(other.rows)
            and _plain(self._cache)
            and _plain(other._cache)
        )

    def merge(self, other: Group) -> None:
        """Take ``other``'s rows into this group: both are waiting to feed their last sampled
        token, so their caches are right-aligned; the shorter is padded on the left (masked)."""
        assert self._cache is not None and other._cache is not None
        width = max(self._attention_mask.shape[1], other._attention_mask.shape[1])
        self._attention_mask = torch.cat(
            [_pad_left(self._attention_mask, width), _pad_left(other._attention_mask, width)]
        )
        for mine, theirs in zip(_layers(self._cache), _layers(other._cache), strict=True):
            keys = [_pad_left(mine.keys, width, dim=2), _pad_left(theirs.keys, width, dim=2)]
            values = [
                _pad_left(mine.values, width, dim=2),
                _pad_left(theirs.values, width, dim=2),
            ]
            mine.keys, mine.values = torch.cat(keys), torch.cat(values)
        self._next_position = torch.cat([self._next_position, other._next_position])
        self.rows = self.rows + other.rows
        other.rows = []

    def _trim(self) -> None:
        """Drop leading columns no row uses (padding left by rows that have gone), so a group
        that keeps taking new rows does not grow wider than its longest row."""
        used = self._attention_mask.any(dim=0).nonzero()
        first = int(used[0]) if len(used) else 0
        if first == 0 or not _plain(self._cache):
            return
        assert self._cache is not None
        self._attention_mask = self._attention_mask[:, first:]
        for layer in _layers(self._cache):
            layer.keys = layer.keys[:, :, first:]
            layer.values = layer.values[:, :, first:]

    def _forward(
        self, model: Any, input_ids: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        with self._adapters(model):
            out = model(
                input_ids=input_ids,
                attention_mask=self._attention_mask,
                position_ids=positions,
                past_key_values=self._cache,
                use_cache=True,
                logits_to_keep=1,
            )
        logits: torch.Tensor = out.logits[:, -1, :].float()
        return logits

    def _adapters(self, model: Any) -> AbstractContextManager[None]:
        """Make each row use its adapter for the next forward pass."""
        if not isinstance(model, PeftModel):
            return nullcontext()  # no adapter loaded yet: every row is a base row
        if self.dora_adapter is None:
            return self._router.route([row.adapter or BASE_ADAPTER for row in self.rows])
        if model.active_adapter != self.dora_adapter:
            model.set_adapter(self.dora_adapter, inference_mode=True)
        return nullcontext()


def raw_logprobs(logits: torch.Tensor, rows: list[Row]) -> dict[int, torch.Tensor]:
    """The log-softmax of the model's own logits for each row that asked for logprobs, by row
    index: before any processor, mask or temperature, as vLLM reports them by default
    (``logprobs_mode`` ``raw_logprobs``).  Taken before :func:`sample` edits ``logits``."""
    return {
        i: torch.log_softmax(logits[i], dim=-1)
        for i, row in enumerate(rows)
        if row.top_logprobs is not None
    }


def sample(logits: torch.Tensor, rows: list[Row]) -> list[int | Exception]:
    """Pick each row's next token: argmax when greedy, else temperature + top-p.

    Rows with logits processors (penalties, logit_bias, min_tokens) get them applied to their
    own row first, then rows with a grammar their own mask; rows without either cost nothing
    extra.  A row whose sampling fails gets the exception in its place, so one bad row can
    only fail itself, never the other tenants' rows in its batch.
    """
    failed: dict[int, Exception] = {}
    for i, row in enumerate(rows):
        try:
            if row.logits is not None and row.logits.processors:
                logits[i] = row.logits.process(row.prompt_ids, row.token_ids, logits[i])
            if row.grammar is not None:
                row.grammar.mask(logits[i])
        except RuntimeError as exc:
            failed[i] = exc
    picked: list[int | Exception] = list(logits.argmax(dim=-1).tolist())
    for i, row in enumerate(rows):
        if i in failed:
            picked[i] = failed[i]
        elif not row.sampling.greedy:
            try:
                picked[i] = _sample_one(logits[i], row.sampling, row.generator, row.logits)
            except RuntimeError as exc:  # e.g. torch.multinomial on NaN probabilities
                picked[i] = exc
    return picked


def _sample_one(
    logits: torch.Tensor,
    sampling: SamplingParams,
    generator: torch.Generator | None,
    row_logits: RowLogits | None = None,
) -> int:
    scaled = logits.float() / sampling.temperature
    if row_logits is not None and row_logits.warpers:
        scaled = row_logits.warp(scaled)  # top_k and min_p, after the temperature as in vLLM
    probs = torch.softmax(scaled, dim=-1)
    sorted_probs, order = probs.sort(descending=True)
    if sampling.top_p < 1.0:
        # Keep the smallest prefix whose mass reaches top_p; the top token always survives.
        outside = sorted_probs.cumsum(-1) - sorted_probs >= sampling.top_p
        outside[0] = False
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
    choice = torch.multinomial(sorted_probs, 1, generator=generator)
    return int(order[choice].item())


def _plain(cache: DynamicCache | None) -> bool:
    """A cache of plain full-attention layers only (sliding windows are not merged or cut)."""
    return cache is not None and all(
        type(layer) is DynamicLayer and layer.is_initialized for layer in cache.layers
    )


def _layers(cache: DynamicCache) -> list[Any]:
    """The cache's layers, typed loosely: checked to be plain ones by :func:`_plain`."""
    return list(cache.layers)


def _pad_left(t: torch.Tensor, width: int, dim: int = 1) -> torch.Tensor:
    missing = width - t.shape[dim]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)
