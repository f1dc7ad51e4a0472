"""Small exact tests for "is the candidate better than noise?" on the gate's held-out rows.

Pure Python (no SciPy): the samples are tens to hundreds of rows, where exact tests are cheap.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from math import comb


def sign_test(differences: Sequence[float]) -> tuple[int, int, float]:
    """One-sided exact sign test that paired differences are positive more often than not.

    Returns (wins, trials, p): ``wins`` rows improved, out of ``trials`` that changed at all
    (ties carry no information and are dropped), and P(Binomial(trials, 1/2) >= wins).
    """
    wins = sum(1 for d in differences if d > 0)
    trials = sum(1 for d in differences if d != 0)
    if trials == 0:
        return 0, 0, 1.0
    p = sum(comb(trials, k) for k in range(wins, trials + 1)) / 2**trials
    return wins, trials, p


def permutation_test(
    higher: Sequence[float], lower: Sequence[float], *, rounds: int = 4000, seed: int = 0
) -> float:
    """One-sided permutation p-value that mean(higher) - mean(lower) is above chance.

    Seeded, so the same rows always give the same p. With the +1 correction it is never 0.
    """
    if not higher or not lower:
        return 1.0
    observed = sum(higher) / len(higher) - sum(lower) / len(lower)
    pooled = list(higher) + list(lower)
    n = len(higher)
    rng = random.Random(seed)
    extreme = 0
    for _ in range(rounds):
        rng.shuffle(pooled)
        diff = sum(pooled[:n]) / n - sum(pooled[n:]) / (len(pooled) - n)
        if diff >= observed - 1e-12:
            extreme += 1
    return (extreme + 1) / (rounds + 1)
