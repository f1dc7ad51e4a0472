"""Wall time of one whole retraining round on SmolLM2-135M-Instruct, CPU, phase by phase.

The rows are real: the ``opening`` rule's edit pairs (``bench/learning_data.py``) on the base's
own greedy answers to the 120 train prompts (cached by ``bench/bench_learning.py``). A
1,000-edit round repeats those 120 rows in order (the 121st is the first again), which keeps
the token counts, and so the time, of real feedback; its learning is not measured here.

A round is what ``flywheel retrain run`` does apart from its database bookkeeping (a few
milliseconds): the plan and the held-out split (``retrain.plan``), training
(``retrain.train.train_round``: load, dataset and reference log-probabilities, the steps,
saving), then the gate (``retrain.gate.evaluate`` on the rule's golden set and the held-out
rows). Each size trains with the defaults the project ships.

``--precision-steps N`` first times N training steps in fp32 and in bf16 autocast, alternating
(so the machine's noise hits both alike), on the same batch of 4 real edit pairs, and prints
the ratio: the measurement behind ``precision = "auto"``.

    .venv/bin/python -m bench.bench_retrain [--rows 120 1000] [--precision-steps 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.bench_learning import (
    DEFAULT_MODEL,
    Answerer,
    Options,
    _heldout_fraction,
    build_rows,
    gate,
    log,
)
from bench.learning_data import RULES, TRAIN_PROMPTS


def _options(model: Path, threads: int) -> Options:
    return Options(
        model_dir=model,
        rows=len(TRAIN_PROMPTS),
        heldout=20,
        max_new_tokens=96,
        eval_max_new_tokens=128,
        batch_size=16,
        method="auto",
        overrides={},
        seed=0,
        device="cpu",
        use_cache=True,
        samples=0,
        threads=threads,
    )


def edit_rows(opts: Options, n: int) -> tuple[Any, list[Any]]:
    """The opening rule's plan and ``n`` edit pairs (the 120 real ones, repeated in order)."""
    rule = RULES["opening"]
    answers = Answerer(opts.model_dir, None, "cpu", 16, True).answers(TRAIN_PROMPTS, 96)
    _, rows = build_rows(rule, TRAIN_PROMPTS, answers, opts)
    rows = [rows[i % len(rows)] for i in range(n)]
    from retrain.plan import make_plan

    return make_plan(len(rows), 0, 0, "auto"), rows


def precision_steps(opts: Options, steps: int) -> dict[str, list[float]]:
    """Seconds per training step (forward, DPO + SFT loss, backward) in each precision."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(opts.model_dir)
    model: Any = AutoModelForCausalLM.from_pretrained(opts.model_dir, dtype=torch.float32)
    model = get_peft_model(
        model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
    )
    _, rows = edit_rows(opts, 10)
    rows = rows[:4]
    texts = []
    for row in rows:
        for side in (row.chosen, row.rejected):
            texts.append(tokenizer.apply_chat_template(row.prompt + side, tokenize=False))
    batch = tokenizer(texts, return_tensors="pt", padding=True)

    def step(bf16: bool) -> float:
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(**batch, labels=batch["input_ids"])
        out.loss.backward()
        model.zero_grad()
        return time.perf_counter() - started

    step(False), step(True)  # warm-up: first calls allocate and pick kernels
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for _ in range(steps):
        times["fp32"].append(step(False))
        times["bf16"].append(step(True))
    return times


def one_round(opts: Options, n: int, workdir: Path) -> dict[str, Any]:
    from retrain.plan import row_kind, split_heldout
    from retrain.train import train_round

    started = time.perf_counter()
    plan, rows = edit_rows(opts, n)
    train, held = split_heldout(rows, _heldout_fraction(), opts.seed, row_kind)
    plan_s = time.perf_counter() - started
    log(f"{n} edits: {len(train)} train, {len(held)} held out; {plan.describe()}")
    result = train_round(
        opts.model_dir,
        None,
        plan.method,
        train,
        workdir / f"adapter-{n}",
        plan.hyperparameters,
        seed=opts.seed,
        device="cpu",
        progress=lambda e: log(f"  {e.get('line', '')}"),
    )
    started = time.perf_counter()
    verdict = gate(RULES["opening"], opts, None, result.adapter_dir, held)
    gate_s = time.perf_counter() - started
    phases = {"plan and split": plan_s, **result.timings, "gate": gate_s}
    return {
        "edits": n,
        "train_rows": len(train),
        "heldout_rows": len(held),
        "steps": result.steps,
        "precision": result.precision,
        "phases": phases,
        "total": sum(phases.values()),
        "gate": "passed" if verdict.passed else "rejected",
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rows", type=int, nargs="*", default=[120, 1000], help="edits per round; none: no round"
    )
    parser.add_argument("--precision-steps", type=int, default=3)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0: all cores")
    args = parser.parse_args(argv)
    if args.model == DEFAULT_MODEL and not (args.model / "config.json").exists():
        from bench.bench_real_engines import real_base

        real_base()
    import torch

    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    opts = _options(args.model, threads)
    load = os.getloadavg()[0]
    print(
        f"### One round on {args.model.name}, CPU ({threads} torch threads, "
        f"load average {load:.1f} at the start)\n"
    )
    if args.precision_steps:
        times = precision_steps(opts, args.precision_steps)
        ratios = [b / f for f, b in zip(times["fp32"], times["bf16"], strict=True)]
        print(
            "Training step (4 edit pairs, forward + loss + backward), alternating: fp32 "
            f"{', '.join(f'{t:.2f}' for t in times['fp32'])} s; bf16 autocast "
            f"{', '.join(f'{t:.2f}' for t in times['bf16'])} s; bf16/fp32 "
            f"{', '.join(f'{r:.2f}' for r in ratios)} (median {statistics.median(ratios):.2f})\n"
        )
        sys.stdout.flush()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.rows:
            results.append(one_round(opts, n, Path(tmp)))
    if not results:
        return results
    names = list(results[0]["phases"])
    print(
        "| edits | train + held out | steps | precision | "
        + " | ".join(names)
        + " | total | verdict |"
    )
    print("| ---: | ---: | ---: | --- |" + " ---: |" * len(names) + " ---: | --- |")
    for r in results:
        cells = " | ".join(f"{r['phases'][k]:.1f}" for k in names)
        print(
            f"| {r['edits']} | {r['train_rows']} + {r['heldout_rows']} | {r['steps']} | "
            f"{r['precision']} | {cells} | **{r['total']:.0f}** | {r['gate']} |"
        )
    print("\nSeconds. load: model and tokenizer; dataset: TRL's tokenization and the reference")
    print("log-probabilities, scored once; train: the optimizer steps; gate: greedy golden-set")
    print("answers of both sides, held-out margins and fluency.")
    return results


if __name__ == "__main__":
    main()
