"""Training rounds and the embedded engine on a CUDA GPU, in bf16 (skipped without CUDA).

The same code paths as on CPU (``device="cuda"`` selects bf16 weights, TRL's ``bf16=True`` and
activation checkpointing); never faked.  It needs neither vllm nor a database, so it also runs
where only torch, transformers, PEFT and TRL are installed:
``pytest --noconftest -p no:cacheprovider tests/engine/test_cuda.py``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("no CUDA GPU", allow_module_level=True)

from retrain.plan import make_plan, row_kind, split_heldout  # noqa: E402
from tests.retrain.test_retrain_core import TINY_BASE, _pairs, _thumbs  # noqa: E402

pytestmark = [pytest.mark.cuda, pytest.mark.slow]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from adapters.demo import build_demo_base

    return build_demo_base(tmp_path_factory.mktemp("models") / "demo-base")


@pytest.fixture(scope="module")
def parents(base: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    from adapters.demo import build_demo_adapter

    root = tmp_path_factory.mktemp("adapters")
    return [build_demo_adapter(base, root / f"a{i}", seed=100 + i) for i in range(4)]


def test_dpo_round_in_bf16_beats_its_parent(
    base: Path, parents: list[Path], tmp_path: Path
) -> None:
    from retrain.evaluate import preference_metrics
    from retrain.train import train_round

    train, held = split_heldout(_pairs(64, seed=1, chat=True), 0.25, seed=0, key=row_kind)
    plan = make_plan(len(train), 0, 0, overrides=TINY_BASE)
    result = train_round(
        base, parents[0], plan.method, train, tmp_path / "dpo", plan.hyperparameters, 0, "cuda"
    )
    parent = preference_metrics(base, parents[0], held, device="cuda")
    candidate = preference_metrics(base, result.adapter_dir, held, device="cuda")
    print(f"DPO on CUDA: parent {parent}, candidate {candidate}, timings {result.timings}")
    assert candidate["accuracy"] > parent["accuracy"]
    assert candidate["mean_margin"] > parent["mean_margin"]


def test_kto_round_in_bf16_beats_its_parent(
    base: Path, parents: list[Path], tmp_path: Path
) -> None:
    from retrain.evaluate import preference_metrics
    from retrain.train import train_round

    train_pairs, held = split_heldout(_pairs(80, seed=2, chat=False), 0.2, seed=0, key=row_kind)
    rows = _thumbs(train_pairs)
    n_up = sum(r.label for r in rows)
    plan = make_plan(0, n_up, len(rows) - n_up, overrides=TINY_BASE)
    result = train_round(
        base, parents[1], plan.method, rows, tmp_path / "kto", plan.hyperparameters, 0, "cuda"
    )
    parent = preference_metrics(base, parents[1], held, device="cuda")
    candidate = preference_metrics(base, result.adapter_dir, held, device="cuda")
    print(f"KTO on CUDA: parent {parent}, candidate {candidate}, timings {result.timings}")
    assert candidate["mean_margin"] > parent["mean_margin"]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_engine_batches_adapters_on_cuda(base: Path, parents: list[Path], dtype: str) -> None:
    from gateway.engine.base import AdapterRef, GenerationRequest, SamplingParams
    from gateway.engine.embedded import EmbeddedEngine

    refs = [AdapterRef(f"lora-{i}", p, f"v{i}") for i, p in enumerate(parents)]
    greedy = SamplingParams(max_tokens=24, temperature=0.0)

    def req(ref: AdapterRef) -> GenerationRequest:
        return GenerationRequest(ref.engine_name, ref, greedy, prompt="Refunds")

    async def run() -> tuple[list[str], list[str], int]:
        engine = EmbeddedEngine(base, base_model_name="demo", device="cuda", dtype=dtype)
        await engine.start()
        try:

            async def text(r: GenerationRequest) -> str:
                return "".join([c.text async for c in engine.generate(r)])

            alone = [await text(req(r)) for r in refs]
            waves = engine.waves
            together = await asyncio.gather(*(text(req(r)) for r in refs))
            return alone, list(together), engine.waves - waves
        finally:
            await engine.stop()

    alone, together, waves = asyncio.run(run())
    print(f"{dtype}: {together}")
    assert waves == 1  # four adapters, one batch
    assert len(set(alone)) > 1  # the adapters differ
    if dtype == "float32":
        assert together == alone  # batching does not change greedy results
