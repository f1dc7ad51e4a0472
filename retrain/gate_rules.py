"""The gate's decision, as a pure function of measured numbers (checked by hand in the tests).

A candidate is promoted only when it is measurably better and nothing it must keep got worse.
Defaults (each overridable per tenant in ``tenants.gate_thresholds``):

- ``max_improvement_p`` 0.05: on the round's held-out feedback the candidate must be better
  than the serving version by more than noise for that sample size: for edit pairs, an exact
  one-sided sign test over the rows whose margin (log p(edit) - log p(original)) changed; for
  thumbs, a permutation test that desirable answers gained more log-probability than
  undesirable ones. A candidate that learned nothing, or too few held-out rows to tell, fails;
- ``max_preference_accuracy_drop`` 0.0: on the round's held-out feedback the candidate must
  prefer the chosen answer at least as often as the serving version does;
- ``min_margin_gain`` 0.0: and its mean reward margin must not be lower;
- ``max_check_pass_rate_drop`` 0.05: golden-set check pass rate may drop at most 5 points, and
  any hard check that passed for the serving version must still pass;
- ``max_nll_increase`` 0.10: the mean NLL of golden reference answers may rise at most 10 %;
- ``max_length_ratio`` 1.5: mean answer length at most 1.5x the serving version's, so a
  candidate that only learned to be longer is caught;
- ``max_fluency_nll_increase`` 1.0: the bare base model scores each side's golden answers,
  and the median negative log-likelihood of their tokens (the typical token, so the few
  unusual tokens a house rule adds do not count) may rise by at most 1 nat; a candidate whose
  answers became word salad or fragments is caught (+6.7 nats measured), even where the
  golden set has no reference answers, while every house rule of the learning benchmark
  stays within +0.3 (docs/gate.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

DEFAULT_THRESHOLDS: dict[str, float] = {
    "max_improvement_p": 0.05,
    "max_fluency_nll_increase": 1.0,
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
    fluency_nll: float | None = None


@dataclass
class Improvement:
    """The paired comparison on held-out feedback: is the candidate better than noise?"""

    test: str  # "sign" (edit pairs) or "permutation" (thumbs); "none" without held-out rows
    p_value: float
    rows: int
    wins: int | None = None  # sign test: rows whose margin grew
    trials: int | None = None  # sign test: rows whose margin changed at all


@dataclass
class Verdict:
    passed: bool
    reasons: list[str]
    thresholds: dict[str, float]
    serving: dict[str, Any]
    candidate: dict[str, Any]
    improvement: dict[str, Any] | None = None


def thresholds_for(overrides: dict[str, Any] | None) -> dict[str, float]:
    merged = dict(DEFAULT_THRESHOLDS)
    for key, value in (overrides or {}).items():
        if key not in DEFAULT_THRESHOLDS:
            raise ValueError(f"unknown gate threshold {key!r}; known: {sorted(DEFAULT_THRESHOLDS)}")
        merged[key] = float(value)
    return merged


def _improvement_reason(imp: Improvement | None, alpha: float) -> str | None:
    if imp is None or imp.test == "none":
        return (
            "not measurably better: the round held out no feedback to compare the candidate "
            "with the serving version on"
        )
    if imp.p_value < alpha:
        return None
    if imp.test == "sign":
        return (
            f"not measurably better on held-out feedback: the users' edits gained over the "
            f"original answers on {imp.wins} of {imp.trials} held-out rows that changed "
            f"(p = {imp.p_value:.3g}; better than noise needs p < {alpha:g})"
        )
    return (
        f"not measurably better on held-out feedback: thumbed-up answers did not gain "
        f"likelihood over thumbed-down ones beyond chance ({imp.rows} held-out rows, "
        f"p = {imp.p_value:.3g}; needs p < {alpha:g})"
    )


def decide(
    serving: SideMetrics,
    candidate: SideMetrics,
    thresholds: dict[str, float],
    improvement: Improvement | None = None,
) -> Verdict:
    reasons: list[str] = []
    t = thresholds
    why_not_better = _improvement_reason(improvement, t["max_improvement_p"])
    if why_not_better:
        reasons.append(why_not_better)
    if serving.fluency_nll is not None and candidate.fluency_nll is not None:
        ceiling = serving.fluency_nll + t["max_fluency_nll_increase"]
        if candidate.fluency_nll > ceiling:
            reasons.append(
                f"answers became less fluent: the base model finds the typical word of the "
                f"candidate's golden answers much less likely ({candidate.fluency_nll:.2f} vs "
                f"{serving.fluency_nll:.2f} nats per token, median, at most +"
                f"{t['max_fluency_nll_increase']:g} allowed): nonsense or broken text"
            )
    if serving.preference_accuracy is not None and candidate.preference_accuracy is not None:
        floor = serving.preference_accuracy - t["max_preference_accuracy_drop"]
        if candidate.preference_accuracy < floor:
            reasons.append(
                f"prefers the users' answers less often: preference accuracy "
                f"{candidate.preference_accuracy:.3f} < {floor:.3f} "
                f"(serving {serving.preference_accuracy:.3f})"
            )
    if serving.mean_margin is not None and candidate.mean_margin is not None:
        floor = serving.mean_margin + t["min_margin_gain"]
        if candidate.mean_margin < floor:
            reasons.append(
                f"leans towards the users' answers less: mean margin "
                f"{candidate.mean_margin:.4f} < {floor:.4f} (serving {serving.mean_margin:.4f})"
            )
    if serving.check_pass_rate is not None and candidate.check_pass_rate is not None:
        floor = serving.check_pass_rate - t["max_check_pass_rate_drop"]
        if candidate.check_pass_rate < floor - 1e-12:
            reasons.append(
                f"regresses the golden set: its answers pass {candidate.check_pass_rate:.0%} of "
                f"the golden checks, the serving version's {serving.check_pass_rate:.0%} "
                f"(at most {t['max_check_pass_rate_drop']:.0%} lower allowed)"
            )
        dropped = [
            i
            for i, (before, after) in enumerate(
                zip(serving.hard_checks_passed, candidate.hard_checks_passed, strict=True)
            )
            if before and not after
        ]
        if dropped:
            reasons.append(
                f"regresses the golden set: {len(dropped)} must-pass check(s) that the serving "
                f"version passes now fail (checks {dropped})"
            )
    if serving.reference_nll is not None and candidate.reference_nll is not None:
        ceiling = serving.reference_nll * (1 + t["max_nll_increase"])
        if candidate.reference_nll > ceiling:
            reasons.append(
                f"finds the golden reference answers less likely: NLL "
                f"{candidate.reference_nll:.4f} > {ceiling:.4f} (serving "
                f"{serving.reference_nll:.4f})"
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
        improvement=asdict(improvement) if improvement is not None else None,
    )


def summary(verdict: Verdict) -> str:
    lines = [f"gate: {'PASSED' if verdict.passed else 'REJECTED'}"]
    imp = verdict.improvement
    if imp and imp.get("test") == "sign":
        lines.append(
            f"  held-out edits           candidate better on {imp['wins']} of {imp['trials']} "
            f"changed rows (sign test p = {imp['p_value']:.3g})"
        )
    elif imp and imp.get("test") == "permutation":
        lines.append(
            f"  held-out thumbs          {imp['rows']} rows "
            f"(permutation test p = {imp['p_value']:.3g})"
        )
    rows = [
        ("preference accuracy", "preference_accuracy"),
        ("mean reward margin", "mean_margin"),
        ("golden check pass rate", "check_pass_rate"),
        ("reference NLL", "reference_nll"),
        ("mean length (tokens)", "mean_length"),
        ("fluency NLL (base)", "fluency_nll"),
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
