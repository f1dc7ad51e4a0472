"""Batched vs one-at-a-time throughput of the embedded engine across many adapters.

Builds the demo base and eight demo adapters in a temporary directory, then, in one process,
times eight greedy requests (one per adapter) submitted together and the same eight run one
after another, alternating the two several times.  Prints a markdown table.

    .venv/bin/python bench/bench_engine.py [--reps 5] [--max-tokens 64] [--adapters 8]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from adapters.demo import build_demo_adapter, build_demo_base
from gateway.engine.base import AdapterRef, GenerationRequest, SamplingParams
from gateway.engine.embedded import EmbeddedEngine

PROMPTS = (
    "Hello! How can I help you today?",
    "Please open settings, choose security, and press reset.",
    "Your invoice is attached.",
    "We ship within two business days. Refunds take five days.",
    "I would like to change my plan to the annual one.",
    "The quick brown fox jumps over the lazy dog.",
    "Is there anything else?",
    "monday tuesday friday",
)


@dataclass(frozen=True)
class BenchResult:
    batched_tokens_per_s: list[float]
    sequential_tokens_per_s: list[float]
    tokens_per_run: int

    @property
    def ratio(self) -> float:
        batched = statistics.median(self.batched_tokens_per_s)
        return batched / statistics.median(self.sequential_tokens_per_s)

    def table(self) -> str:
        rows = [
            "| mode | runs | median tok/s | min tok/s | max tok/s |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for mode, values in (
            ("batched (all at once)", self.batched_tokens_per_s),
            ("sequential (one at a time)", self.sequential_tokens_per_s),
        ):
            rows.append(
                f"| {mode} | {len(values)} | {statistics.median(values):.1f} "
                f"| {min(values):.1f} | {max(values):.1f} |"
            )
        rows.append(f"\nbatched / sequential = **{self.ratio:.2f}x** ")
        rows.append(f"({self.tokens_per_run} generated tokens per run)")
        return "\n".join(rows)


def _requests(refs: list[AdapterRef], max_tokens: int) -> list[GenerationRequest]:
    sampling = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    return [
        GenerationRequest(f"bench-{i}", ref, sampling, prompt=PROMPTS[i % len(PROMPTS)])
        for i, ref in enumerate(refs)
    ]


async def _completion_tokens(engine: EmbeddedEngine, request: GenerationRequest) -> int:
    tokens = 0
    async for chunk in engine.generate(request):
        tokens = chunk.completion_tokens
    return tokens


async def _timed(engine: EmbeddedEngine, requests: list[GenerationRequest], batched: bool) -> float:
    """Generated tokens per second for ``requests``, all at once or one after another."""
    started = time.perf_counter()
    if batched:
        counts = await asyncio.gather(*(_completion_tokens(engine, r) for r in requests))
    else:
        counts = [await _completion_tokens(engine, r) for r in requests]
    return sum(counts) / (time.perf_counter() - started)


async def run_bench(
    root: Path,
    *,
    reps: int = 5,
    max_tokens: int = 64,
    adapters: int = 8,
    hidden_size: int = 64,
    layers: int = 2,
) -> BenchResult:
    """Build the demo models under ``root`` and measure both modes, interleaved."""
    base = build_demo_base(root / "demo-base", hidden_size=hidden_size, layers=layers)
    refs = [
        AdapterRef(f"bench-{i}", build_demo_adapter(base, root / f"a{i}", seed=100 + i), f"v{i}")
        for i in range(adapters)
    ]
    engine = EmbeddedEngine(base, base_model_name="demo", max_batch_size=adapters)
    await engine.start()
    try:
        for ref in refs:
            await engine.load_adapter(ref)
        requests = _requests(refs, max_tokens)
        tokens = sum(await asyncio.gather(*(_completion_tokens(engine, r) for r in requests)))
        batched: list[float] = []
        sequential: list[float] = []
        for _ in range(reps):
            batched.append(await _timed(engine, requests, batched=True))
            sequential.append(await _timed(engine, requests, batched=False))
        return BenchResult(batched, sequential, tokens)
    finally:
        await engine.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--adapters", type=int, default=8)
    # The default demo base is tiny, so Python overhead dominates; a wider, deeper one shows
    # how batching pays off as the base model's share of the work grows.
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="flywheel-bench-") as tmp:
        result = asyncio.run(
            run_bench(
                Path(tmp),
                reps=args.reps,
                max_tokens=args.max_tokens,
                adapters=args.adapters,
                hidden_size=args.hidden_size,
                layers=args.layers,
            )
        )
    print(f"demo base: hidden_size={args.hidden_size}, layers={args.layers}\n")
    print(result.table())


if __name__ == "__main__":
    main()
