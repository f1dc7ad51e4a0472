"""What constrained decoding costs on the embedded engine: tokens/s with and without a JSON schema.

SmolLM2-135M-Instruct (the default base, converted from the cached wheel) on the embedded
engine, in one process: eight chat requests sent together (one wave), first free, then each
held to a JSON schema (llguidance, gateway/engine/embedded_grammar.py), the two modes
alternated several times so both see the same machine.  Tokens/s is every generated token of
the eight over the wall time; both modes stop at EOS or ``max_tokens``.  Prints a markdown
table and the ratio.

    .venv/bin/python -m bench.bench_structured [--reps 4] [--max-tokens 96] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer

from gateway.engine.base import GenerationRequest, SamplingParams
from gateway.engine.embedded import EmbeddedEngine
from gateway.engine.embedded_grammar import Grammars, RowGrammar, constraint_for

PROMPTS = (
    "Invent a customer: their name, age and city.",
    "Describe a new employee: name, age and home town.",
    "Make up a character for a story, with a name, an age and a city.",
    "Who is the oldest person you can imagine? Name, age, city.",
    "Create a user profile with a name, an age and a city.",
    "Describe a pilot: name, age and the city they fly from.",
    "Give me a fictional author with a name, an age and a city.",
    "Invent a chef: name, age, and the city of their restaurant.",
)
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "city": {"type": "string", "maxLength": 40},
        "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 20}, "maxItems": 3},
    },
    "required": ["name", "age", "city", "hobbies"],
    "additionalProperties": False,
}
FORMAT = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}}
REPLAYS = 3


@dataclass(frozen=True)
class Run:
    tokens: int
    seconds: float
    valid: int  # answers that parse as JSON
    cut: int  # answers max_tokens cut off (finish_reason "length")
    steps: int  # forward passes (prefill and decode)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


def real_base() -> Path:
    from adapters.base_models import SMOLLM2, convert

    cache = Path(os.environ.get("FLYWHEEL_CACHE_DIR") or Path.home() / ".cache" / "flywheel")
    return convert(cache / "models" / f"smollm2-135m-instruct-{SMOLLM2.version}", SMOLLM2)


def _requests(concurrency: int, max_tokens: int, schema: bool, rep: int) -> list[GenerationRequest]:
    extra = {"response_format": FORMAT} if schema else {}
    return [
        GenerationRequest(
            f"bench-{'schema' if schema else 'free'}-{rep}-{i}",
            None,
            SamplingParams(max_tokens=max_tokens, temperature=0.7, seed=rep * 100 + i),
            messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
            extra=dict(extra),
        )
        for i in range(concurrency)
    ]


async def _one(engine: EmbeddedEngine, request: GenerationRequest) -> tuple[int, str, bool]:
    """Tokens generated, the text, and whether max_tokens cut it off."""
    tokens, text, cut = 0, [], False
    async for chunk in engine.generate(request):
        tokens = chunk.completion_tokens
        text.append(chunk.text)
        cut = cut or chunk.finish_reason == "length"
    return tokens, "".join(text), cut


def _parses(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


async def _timed(engine: EmbeddedEngine, requests: list[GenerationRequest]) -> Run:
    passes = engine.forward_passes
    started = time.perf_counter()
    answers = await asyncio.gather(*(_one(engine, r) for r in requests))
    seconds = time.perf_counter() - started
    return Run(
        sum(t for t, _, _ in answers),
        seconds,
        sum(_parses(text) for _, text, _ in answers),
        sum(cut for _, _, cut in answers),
        engine.forward_passes - passes,
    )


def grammar_cost(engine: EmbeddedEngine, base: Path, request_ids: set[str]) -> float:
    """Microseconds of grammar work per token (mask, then take the token in), replaying the
    token ids the schema runs generated through fresh matchers: the part of a constrained
    step that a free row does not pay."""
    tokenizer = AutoTokenizer.from_pretrained(base)
    constraint = constraint_for({"response_format": FORMAT})
    assert constraint is not None
    vocab = len(tokenizer)
    grammars = Grammars(tokenizer, vocab, [tokenizer.eos_token_id])
    logits = torch.zeros(vocab)
    answers = [
        [t for t in stats.token_ids if t != tokenizer.eos_token_id]
        for stats in engine.recent
        if stats.request_id in request_ids
    ]
    tokens = sum(len(ids) for ids in answers)
    best = float("inf")
    for _ in range(REPLAYS):  # the fastest replay: the machine is shared, noise only adds
        seconds = 0.0
        for ids in answers:
            grammar = RowGrammar(grammars.matcher(constraint))
            for token in ids:
                started = time.perf_counter()
                grammar.mask(logits)
                grammar.accept(token)
                seconds += time.perf_counter() - started
        best = min(best, seconds)
    return best / max(tokens, 1) * 1e6


async def run_bench(
    base: Path, *, reps: int, max_tokens: int, concurrency: int
) -> tuple[dict[str, list[Run]], float]:
    engine = EmbeddedEngine(base, base_model_name="smollm2", max_batch_size=concurrency)
    await engine.start()
    try:
        # Warm-up: the first schema request also builds llguidance's tokenizer (once).
        await _timed(engine, _requests(concurrency, 8, schema=False, rep=-1))
        await _timed(engine, _requests(concurrency, 8, schema=True, rep=-1))
        runs: dict[str, list[Run]] = {"free": [], "schema": []}
        for rep in range(reps):
            for mode in ("free", "schema"):
                requests = _requests(concurrency, max_tokens, mode == "schema", rep)
                runs[mode].append(await _timed(engine, requests))
        ids = {f"bench-schema-{rep}-{i}" for rep in range(reps) for i in range(concurrency)}
        return runs, grammar_cost(engine, base, ids)
    finally:
        await engine.stop()


def report(
    runs: dict[str, list[Run]], grammar_us: float, *, concurrency: int, max_tokens: int
) -> str:
    rows = [
        f"{concurrency} concurrent chat requests on SmolLM2-135M-Instruct, temperature 0.7, "
        f"max_tokens {max_tokens}; free and JSON-schema runs alternated.\n",
        "| mode | runs | median tok/s | min | max | tokens per run (median) | ms per step "
        "(median) | rows per step | answers that parse | cut off by max_tokens |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for mode, label in (("free", "free text"), ("schema", "JSON schema (llguidance)")):
        values = [r.tokens_per_s for r in runs[mode]]
        tokens = statistics.median(r.tokens for r in runs[mode])
        parsed = sum(r.valid for r in runs[mode])
        total = concurrency * len(runs[mode])
        step_ms = statistics.median(1000 * r.seconds / r.steps for r in runs[mode])
        per_step = sum(r.tokens for r in runs[mode]) / sum(r.steps for r in runs[mode])
        rows.append(
            f"| {label} | {len(values)} | {statistics.median(values):.1f} | {min(values):.1f} "
            f"| {max(values):.1f} | {tokens:.0f} | {step_ms:.1f} | {per_step:.1f} "
            f"| {parsed} / {total} | {sum(r.cut for r in runs[mode])} |"
        )
    ratio = statistics.median(r.tokens_per_s for r in runs["schema"]) / statistics.median(
        r.tokens_per_s for r in runs["free"]
    )
    schema = runs["schema"]
    step_ms = statistics.median(1000 * r.seconds / r.steps for r in schema)
    rows_per_step = sum(r.tokens for r in schema) / sum(r.steps for r in schema)
    share = grammar_us / 1000 * rows_per_step / step_ms * 100
    rows.append(
        f"\nschema / free tokens/s = **{ratio:.2f}x**; the grammar's own work (mask, then take "
        f"the token in), replayed over the schema answers' tokens: **{grammar_us:.0f} µs per "
        f"token** per row, about {share:.1f} % of a {step_ms:.0f} ms step of "
        f"{rows_per_step:.1f} rows."
    )
    rows.append(
        "\nTokens/s counts every generated token over the wall time, so it also moves with "
        "the answers' lengths: free answers run longer (more of them reach max_tokens, with "
        "longer contexts per step, and the last rows decode in a thinner batch), which is why "
        "a ratio near or above 1 does not mean the grammar is free; its cost is the line above. "
        "The machine is shared: compare the two rows, not runs."
    )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--reps", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    runs, grammar_us = asyncio.run(
        run_bench(
            real_base(), reps=args.reps, max_tokens=args.max_tokens, concurrency=args.concurrency
        )
    )
    print(report(runs, grammar_us, concurrency=args.concurrency, max_tokens=args.max_tokens))
    # Other work on the machine moves every number; the load average says how much there was.
    cores = len(os.sched_getaffinity(0))
    print(
        f"\nLoad average (1 min) {load_before:.1f} before and {os.getloadavg()[0]:.1f} after, "
        f"on {cores} cores."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
