"""Wall time of one retraining round on the demo base, CPU, split into its phases.

Synthetic DPO feedback (chat edit pairs) of 200 and 2,000 rows, default DPO hyperparameters,
continuing a demo parent adapter.  Phases: dataset build (our rows to TRL rows, then TRL's
tokenization), training, saving; model loading is reported apart.

    .venv/bin/python -m bench.bench_retrain [--rows 200 2000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from adapters.demo import build_demo_adapter, build_demo_base
from feedback.examples import DPORow
from retrain.plan import default_hyperparameters
from retrain.train import train_round


def rows(n: int) -> list[DPORow]:
    out = []
    for i in range(n):
        prompt = [{"role": "user", "content": f"Question number {i}: what about order {i % 97}?"}]
        out.append(
            DPORow(
                prompt,
                [{"role": "assistant", "content": f"Thank you for asking about order {i % 97}."}],
                [{"role": "assistant", "content": f"order {i % 13} maybe no"}],
            )
        )
    return out


def run(sizes: list[int]) -> list[dict[str, Any]]:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base = build_demo_base(root / "base")
        parent = build_demo_adapter(base, root / "parent", seed=3)
        for n in sizes:
            started = time.perf_counter()
            data = rows(n)
            build = time.perf_counter() - started
            result = train_round(
                base, parent, "dpo", data, root / f"out-{n}", default_hyperparameters("dpo"), seed=0
            )
            wall = time.perf_counter() - started
            t = result.timings
            results.append(
                {
                    "rows": n,
                    "steps": result.steps,
                    "load_s": t.get("load", 0.0),
                    "dataset_s": build + t.get("dataset", 0.0),
                    "train_s": t.get("train", 0.0),
                    "save_s": t.get("save", 0.0),
                    "wall_s": wall,
                }
            )
    return results


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, nargs="+", default=[200, 2000])
    args = parser.parse_args(argv)
    results = run(args.rows)
    print("### One DPO round on the demo base (CPU)\n")
    print("| rows | steps | load (s) | dataset build (s) | training (s) | saving (s) | wall (s) |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        print(
            f"| {r['rows']} | {r['steps']} | {r['load_s']:.2f} | {r['dataset_s']:.2f} | "
            f"{r['train_s']:.2f} | {r['save_s']:.2f} | {r['wall_s']:.2f} |"
        )
    return results


if __name__ == "__main__":
    main()
