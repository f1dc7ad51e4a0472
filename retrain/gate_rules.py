"""The gate's decision, as a pure function of measured numbers (checked by hand in the tests).

Defaults (each overridable per tenant in ``tenants.gate_thresholds``):

- ``max_preference_accuracy_drop`` 0.0: on the round's held-out feedback the candidate must
  prefer the chosen answer at least as often as the serving version does;
- ``min_margin_gain`` 0.0: and its mean reward margin must not be lower;
- ``max_check_pass_rate_drop`` 0.05: golden-set check pass rate may drop at most 5 points, and
  any hard check that passed for the serving version must still pass;
- ``max_nll_increase`` 0.10: the mean NLL of golden reference answers may rise at most 10 %;
- ``max_length_ratio`` 1.5: mean answer length at most 1.5x the serving version's, so a
  candidate that only learned to be longer is caught.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

DEFAULT_THRESHOLDS: dict[str, float] = {
    "max_preference_accuracy_drop": 0.0,
    "min_margin_gain": 0.0,
    "max_check_pass_rate_drop": 0.05,
    "max_nll_increase": 0.10,
    "max_length_ratio": 1.5,
}


@dataclass
class SideMetrics:
    """Everything measured for one adapter version on the same items."""

    preference_accuracy: float | None = None
    mean_margin: float | None = None
    check_pass_rate: float | None = None
    hard_checks_passed: list[bool] = field(default_factory=list)
    reference_nll: float | None = None
    mean_length: float | None = None


@dataclass
class Verdict:
    passed: bool
    reasons: list[str]
    thresholds: dict[str, float]
    serving: dict[str, Any]
    candidate: dict[str, Any]


def thresholds_for(overrides: dict[str, Any] | None) -> dict[str, float]:
    merged = dict(DEFAULT_THRESHOLDS)
    for key, value in (overrides or {}).items():
        if key not in DEFAULT_THRESHOLDS:
            raise ValueError(f"unknown gate threshold {key!r}; known: {sorted(DEFAULT_THRESHOLDS)}")
        merged[key] = float(value)
    return merged


def decide(serving: SideMetrics, candidate: SideMetrics, thresholds: dict[str, float]) -> Verdict:
    reasons: list[str] = []
    t = thresholds
    if serving.preference_accuracy is not None and candidate.preference_accuracy is not None:
        floor = serving.preference_accuracy - t["max_preference_accuracy_drop"]
        if candidate.preference_accuracy < floor:
            reasons.append(
                f"preference accuracy {candidate.preference_accuracy:.3f} < {floor:.3f} "
                f"(serving {serving.preference_accuracy:.3f})"
            )
    if serving.mean_margin is not None and candidate.mean_margin is not None:
        floor = serving.mean_margin + t["min_margin_gain"]
        if candidate.mean_margin < floor:
            reasons.append(
                f"mean reward margin {candidate.mean_margin:.4f} < {floor:.4f} "
                f"(serving {serving.mean_margin:.4f})"
            )
    if serving.check_pass_rate is not None and candidate.check_pass_rate is not None:
        floor = serving.check_pass_rate - t["max_check_pass_rate_drop"]
        if candidate.check_pass_rate < floor - 1e-12:
            reasons.append(
                f"golden check pass rate {candidate.check_pass_rate:.3f} < {floor:.3f} "
                f"(serving {serving.check_pass_rate:.3f})"
            )
        dropped = [
            i
            for i, (before, after) in enumerate(
                zip(serving.hard_checks_passed, candidate.hard_checks_passed, strict=True)
            )
            if before and not after
        ]
        if dropped:
            reasons.append(f"{len(dropped)} hard check(s) that passed before now fail: {dropped}")
    if serving.reference_nll is not None and candidate.reference_nll is not None:
        ceiling = serving.reference_nll * (1 + t["max_nll_increase"])
        if candidate.reference_nll > ceiling:
            reasons.append(
                f"reference NLL {candidate.reference_nll:.4f} > {ceiling:.4f} "
                f"(serving {serving.reference_nll:.4f})"
            )
    if serving.mean_length and candidate.mean_length is not None:
        ratio = candidate.mean_length / serving.mean_length
        if ratio > t["max_length_ratio"]:
            reasons.append(
                f"answers got {ratio:.2f}x longer ({candidate.mean_length:.1f} vs "
                f"{serving.mean_length:.1f} tokens), above {t['max_length_ratio']}x"
            )
    return Verdict(
        passed=not reasons,
        reasons=reasons,
        thresholds=thresholds,
        serving=asdict(serving),
        candidate=asdict(candidate),
    )


def summary(verdict: Verdict) -> str:
    lines = [f"gate: {'PASSED' if verdict.passed else 'REJECTED'}"]
    rows = [
        ("preference accuracy", "preference_accuracy"),
        ("mean reward margin", "mean_margin"),
        ("golden check pass rate", "check_pass_rate"),
        ("reference NLL", "reference_nll"),
        ("mean length (tokens)", "mean_length"),
    ]
    for label, key in rows:
        s, c = verdict.serving.get(key), verdict.candidate.get(key)
        if s is None and c is None:
            lines.append(f"  {label:<24} skipped (no data)")
        else:
            lines.append(f"  {label:<24} serving={_fmt(s)}  candidate={_fmt(c)}")
    lines += [f"  reason: {r}" for r in verdict.reasons]
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{v:.4f}"
