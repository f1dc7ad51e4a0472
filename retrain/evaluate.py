"""Score adapters on held-out feedback: the numbers that decide whether a candidate ships.

Every metric here is built on one measurement, the summed log-probability of a completion given
its prompt, tokenized exactly the way TRL's DPO and KTO trainers tokenize a training row:

* plain text: ``tokenizer(prompt)`` and ``tokenizer(prompt + completion + eos)`` (TRL appends the
  EOS token to text completions);
* chat messages: the chat template of the prompt with the generation prompt, and of
  prompt + completion;

and the completion is what follows their common prefix. So a margin measured here is the
quantity the trainer optimised (without the reference term), and parent and candidate are
measured the same way.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from feedback.examples import DPORow, KTORow, Text


def _ids(tokenizer: Any, text: Text, *, generation_prompt: bool = False) -> list[int]:
    if isinstance(text, list):
        out = tokenizer.apply_chat_template(
            text, tokenize=True, return_dict=True, add_generation_prompt=generation_prompt
        )
    else:
        out = tokenizer(text=text)
    return list(out["input_ids"])


def _assistant(content: str) -> dict[str, str]:
    return {"role": "assistant", "content": content}


def tokenize_pair(tokenizer: Any, prompt: Text, completion: Text) -> tuple[list[int], list[int]]:
    """(prompt_ids, completion_ids) as TRL's trainers build them for one training row."""
    if isinstance(prompt, list):
        # A bare string answer to a chat prompt (a stored reference answer) is the assistant turn.
        reply = completion if isinstance(completion, list) else [_assistant(completion)]
        prompt_ids = _ids(tokenizer, prompt, generation_prompt=True)
        full_ids = _ids(tokenizer, prompt + reply)
    else:
        if not isinstance(completion, str):
            raise TypeError("a plain-text prompt needs a plain-text completion")
        eos: str = tokenizer.eos_token
        answer = completion if completion.endswith(eos) else completion + eos
        prompt_ids = _ids(tokenizer, prompt)
        full_ids = _ids(tokenizer, prompt + answer)
    # The completion starts where the two tokenizations diverge (tokens can merge across the
    # boundary, and some chat templates render a prompt alone differently).
    n = 0
    for a, b in zip(prompt_ids, full_ids, strict=False):
        if a != b:
            break
        n += 1
    return full_ids[:n], full_ids[n:]


@torch.no_grad()
def completion_token_logprobs(
    model: Any,
    tokenizer: Any,
    items: Sequence[tuple[Text, Text]],
    *,
    batch_size: int = 8,
) -> list[list[float]]:
    """The log-probability of each token of each completion given its prompt.

    Batches are right-padded, so every real token keeps its position and the padding, which
    comes after it, is invisible to it under the causal mask.
    """
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    results: list[list[float]] = []
    for start in range(0, len(items), batch_size):
        encoded = [tokenize_pair(tokenizer, p, c) for p, c in items[start : start + batch_size]]
        width = max(len(p) + len(c) for p, c in encoded)
        input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, (p, c) in enumerate(encoded):
            input_ids[row, : len(p) + len(c)] = torch.tensor(p + c)
            attention[row, : len(p) + len(c)] = 1
        input_ids, attention = input_ids.to(device), attention.to(device)
        logits = model(input_ids=input_ids, attention_mask=attention).logits[:, :-1].float()
        targets = input_ids[:, 1:]
        token_logps = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
        for row, (p, c) in enumerate(encoded):
            # Position i predicts token i + 1: the completion's tokens are predicted from
            # positions len(p) - 1 to len(p) + len(c) - 2.
            results.append(token_logps[row, len(p) - 1 : len(p) + len(c) - 1].tolist())
    return results


def completion_logprobs(
    model: Any,
    tokenizer: Any,
    items: Sequence[tuple[Text, Text]],
    *,
    batch_size: int = 8,
) -> list[tuple[float, int]]:
    """(summed log-prob, token count) of each completion given its prompt."""
    per_token = completion_token_logprobs(model, tokenizer, items, batch_size=batch_size)
    return [(sum(logps), len(logps)) for logps in per_token]


def sequence_logprob(model: Any, tokenizer: Any, prompt: Text, completion: Text) -> float:
    """log p(completion | prompt), summed over the completion's tokens."""
    return completion_logprobs(model, tokenizer, [(prompt, completion)])[0][0]


@dataclass
class Scorer:
    """A base model plus an optional adapter, loaded once to score many items."""

    model: Any
    tokenizer: Any
    batch_size: int = 8

    @classmethod
    def load(
        cls,
        base_model: str | Path,
        adapter_dir: Path | None = None,
        *,
        device: str = "cpu",
        batch_size: int = 8,
    ) -> Scorer:
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        tokenizer = AutoTokenizer.from_pretrained(base_model)
        model: Any = AutoModelForCausalLM.from_pretrained(base_model, dtype=dtype)
        model = model.to(device)
        if adapter_dir is not None:
            model = PeftModel.from_pretrained(model, adapter_dir)
        model.eval()
        return cls(model, tokenizer, batch_size)

    @classmethod
    def load_adapters(
        cls,
        base_model: str | Path,
        adapter_dirs: Mapping[str, Path],
        *,
        device: str = "cpu",
        batch_size: int = 8,
    ) -> Scorer:
        """The base loaded once with every adapter of ``adapter_dirs`` under its name, to score
        several versions (and the bare base) without loading the base for each; ``use`` picks
        one. The numbers are the same as ``load``'s: PEFT applies the active adapter unmerged
        either way."""
        scorer = cls.load(base_model, None, device=device, batch_size=batch_size)
        for name, adapter_dir in adapter_dirs.items():
            if isinstance(scorer.model, PeftModel):
                scorer.model.load_adapter(adapter_dir, adapter_name=name)
            else:
                scorer.model = PeftModel.from_pretrained(
                    scorer.model, adapter_dir, adapter_name=name
                )
        scorer.model.eval()
        return scorer

    @contextmanager
    def use(self, adapter: str | None) -> Iterator[Scorer]:
        """Score with the adapter loaded as ``adapter`` by ``load_adapters``; None: the bare
        base."""
        if adapter is not None:
            self.model.set_adapter(adapter)
            yield self
        elif isinstance(self.model, PeftModel):
            with self.model.disable_adapter():
                yield self
        else:
            yield self

    def logprobs(self, items: Sequence[tuple[Text, Text]]) -> list[float]:
        scored = completion_logprobs(self.model, self.tokenizer, items, batch_size=self.batch_size)
        return [logp for logp, _ in scored]

    def pair_margins(self, pairs: Sequence[DPORow]) -> list[float]:
        """log p(chosen) - log p(rejected) for each pair."""
        chosen = self.logprobs([(p.prompt, p.chosen) for p in pairs])
        rejected = self.logprobs([(p.prompt, p.rejected) for p in pairs])
        return [c - r for c, r in zip(chosen, rejected, strict=True)]

    def preference_metrics(self, pairs: Sequence[DPORow]) -> dict[str, float]:
        """accuracy: share of pairs with logp(chosen) > logp(rejected); mean_margin: their mean gap."""
        if not pairs:
            raise ValueError("no pairs to evaluate")
        chosen = self.logprobs([(p.prompt, p.chosen) for p in pairs])
        rejected = self.logprobs([(p.prompt, p.rejected) for p in pairs])
        margins = [c - r for c, r in zip(chosen, rejected, strict=True)]
        return {
            "accuracy": sum(m > 0 for m in margins) / len(margins),
            "mean_margin": sum(margins) / len(margins),
            "n": float(len(margins)),
        }

    def kto_metrics(
        self, rows: Sequence[KTORow], reference: Scorer | None = None
    ) -> dict[str, float]:
        """Mean log-prob of desirable and undesirable completions and their gap.

        With a ``reference`` (the parent, or the bare base for a new adapter) also ``accuracy``:
        the share of rows whose implied reward, logp - reference logp, has the label's sign
        (desirable went up, undesirable went down), and the mean reward of each class.
        """
        desirable = [r for r in rows if r.label]
        undesirable = [r for r in rows if not r.label]
        if not desirable or not undesirable:
            raise ValueError("kto_metrics needs desirable and undesirable rows")
        logps = self.logprobs([(r.prompt, r.completion) for r in rows])
        mean_d = _mean([lp for lp, r in zip(logps, rows, strict=True) if r.label])
        mean_u = _mean([lp for lp, r in zip(logps, rows, strict=True) if not r.label])
        metrics = {
            "mean_logp_desirable": mean_d,
            "mean_logp_undesirable": mean_u,
            "gap": mean_d - mean_u,
            "n": float(len(rows)),
        }
        if reference is not None:
            ref = reference.logprobs([(r.prompt, r.completion) for r in rows])
            rewards = [lp - rl for lp, rl in zip(logps, ref, strict=True)]
            labelled = list(zip(rewards, rows, strict=True))
            metrics["accuracy"] = _mean([float((rw > 0) == r.label) for rw, r in labelled])
            metrics["mean_reward_desirable"] = _mean([rw for rw, r in labelled if r.label])
            metrics["mean_reward_undesirable"] = _mean([rw for rw, r in labelled if not r.label])
        return metrics

    def reference_nll(self, items: Sequence[tuple[Text, Text]]) -> float:
        """Mean negative log-likelihood per token of reference answers (token-weighted)."""
        scored = completion_logprobs(self.model, self.tokenizer, items, batch_size=self.batch_size)
        tokens = sum(n for _, n in scored)
        if tokens == 0:
            raise ValueError("no reference tokens to score")
        return -sum(logp for logp, _ in scored) / tokens


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def preference_metrics(
    base_model: str | Path,
    adapter_dir: Path | None,
    pairs: Sequence[DPORow],
    *,
    device: str = "cpu",
) -> dict[str, float]:
    """``Scorer.preference_metrics`` for one adapter (None: the bare base)."""
    return Scorer.load(base_model, adapter_dir, device=device).preference_metrics(pairs)


def kto_metrics(
    base_model: str | Path,
    adapter_dir: Path | None,
    rows: Sequence[KTORow],
    *,
    reference_adapter: Path | None = None,
    device: str = "cpu",
) -> dict[str, float]:
    """``Scorer.kto_metrics`` for one adapter; ``reference_adapter`` (if any) gives ``accuracy``."""
    scorer = Scorer.load(base_model, adapter_dir, device=device)
    reference = None
    if reference_adapter is not None:
        reference = Scorer.load(base_model, reference_adapter, device=device)
    return scorer.kto_metrics(rows, reference)


def reference_nll(
    base_model: str | Path,
    adapter_dir: Path | None,
    items: Sequence[tuple[Text, Text]],
    *,
    device: str = "cpu",
) -> float:
    """``Scorer.reference_nll`` for one adapter: (prompt, reference answer) items."""
    return Scorer.load(base_model, adapter_dir, device=device).reference_nll(items)
