"""The gate's decision on a hand-computed case."""

from __future__ import annotations

import pytest

from retrain.checks import run_check
from retrain.gate_rules import (
    DEFAULT_THRESHOLDS,
    Improvement,
    SideMetrics,
    decide,
    thresholds_for,
)
from retrain.stats import permutation_test, sign_test

# 10 of 11 changed rows better: P(Bin(11, 1/2) >= 10) = (11 + 1) / 2048.
BETTER = Improvement("sign", 12 / 2048, 12, wins=10, trials=11)


def test_hand_computed_pass() -> None:
    serving = SideMetrics(0.50, 0.10, 0.75, [True, False], 2.00, 20.0, 1.5)
    candidate = SideMetrics(0.75, 0.40, 0.75, [True, True], 2.15, 29.0, 1.9)
    v = decide(serving, candidate, DEFAULT_THRESHOLDS, BETTER)
    # NLL ceiling 2.00 * 1.10 = 2.20 > 2.15; length ratio 29/20 = 1.45 <= 1.5; checks equal;
    # fluency 1.9 <= 1.5 + 1.0.
    assert v.passed, v.reasons


def test_hand_computed_rejections() -> None:
    serving = SideMetrics(0.80, 0.50, 0.90, [True, True], 2.00, 20.0, 1.5)
    candidate = SideMetrics(0.70, 0.40, 0.80, [True, False], 2.30, 31.0, 2.6)  # 2.6 > 1.5 + 1
    noise = Improvement("sign", 0.5, 12, wins=6, trials=11)
    v = decide(serving, candidate, DEFAULT_THRESHOLDS, noise)
    assert not v.passed
    text = "\n".join(v.reasons)
    assert "not measurably better on held-out feedback" in text
    assert "6 of 11 held-out rows" in text
    assert "less fluent" in text and "2.60 vs 1.50" in text
    assert "preference accuracy 0.700 < 0.800" in text
    assert "mean margin 0.4000 < 0.5000" in text
    assert "pass 80% of the golden checks, the serving version's 90%" in text
    assert "1 must-pass check(s)" in text
    assert "NLL 2.3000 > 2.2000" in text
    assert "1.55x longer" in text  # 31 / 20
    assert len(v.reasons) == 8


def test_typical_nll_is_the_median_token() -> None:
    """A few very unlikely tokens (a house rule's opening line) do not move it; a side whose
    typical token is unlikely (word salad) does."""
    from retrain.gate import typical_nll

    fluent = [[-0.2, -0.5, -0.4], [-0.3, -0.6]]
    opening = [[-9.0, -8.0, -0.2, -0.5, -0.4], [-9.0, -8.0, -0.3, -0.6, -0.45]]
    salad = [[-7.0, -6.5, -0.2], [-8.0, -5.0]]
    assert typical_nll(fluent) == pytest.approx(0.4)
    assert typical_nll(opening) == pytest.approx(0.55)  # the mean is 3.6
    assert typical_nll(salad) == pytest.approx(6.5)
    assert typical_nll([]) is None and typical_nll([[]]) is None


def test_no_heldout_rows_is_not_an_improvement() -> None:
    v = decide(SideMetrics(), SideMetrics(mean_length=10.0), DEFAULT_THRESHOLDS)
    assert not v.passed
    assert "held out no feedback" in v.reasons[0]
    v = decide(SideMetrics(), SideMetrics(), DEFAULT_THRESHOLDS, Improvement("none", 1.0, 0))
    assert not v.passed


def test_missing_sides_are_skipped() -> None:
    v = decide(SideMetrics(), SideMetrics(mean_length=10.0), DEFAULT_THRESHOLDS, BETTER)
    assert v.passed


def test_sign_test_by_hand() -> None:
    assert sign_test([1.0, 2.0, 3.0]) == (3, 3, 1 / 8)
    # Ties are dropped: 2 wins of 3 changed rows, P(X >= 2) = (3 + 1) / 8.
    assert sign_test([1.0, 0.0, 2.0, -1.0]) == (2, 3, 0.5)
    assert sign_test([0.0, 0.0]) == (0, 0, 1.0)
    wins, trials, p = sign_test([0.1] * 12)
    assert (wins, trials) == (12, 12) and p == 1 / 4096


def test_permutation_test_separates_signal_from_noise() -> None:
    assert permutation_test([5.0] * 10, [0.0] * 10) < 0.01
    # The same values on both sides are pure noise.
    same = [0.1, -0.3, 0.2, 0.0, 0.4, -0.1]
    assert permutation_test(same, list(reversed(same))) > 0.3
    assert permutation_test([], [1.0]) == 1.0


def test_thresholds_override_and_unknown() -> None:
    assert thresholds_for({"max_length_ratio": 2})["max_length_ratio"] == 2.0
    with pytest.raises(ValueError):
        thresholds_for({"nope": 1})


@pytest.mark.parametrize(
    ("check", "text", "ok"),
    [
        ({"type": "json"}, '{"a": 1}', True),
        ({"type": "json"}, "{a}", False),
        (
            {"type": "json_schema", "schema": {"type": "object", "required": ["a"]}},
            '{"a": 1}',
            True,
        ),
        (
            {"type": "json_schema", "schema": {"type": "object", "required": ["a"]}},
            '{"b": 1}',
            False,
        ),
        ({"type": "contains", "value": "refund"}, "a refund", True),
        ({"type": "not_contains", "value": "refund"}, "a refund", False),
        ({"type": "regex", "pattern": r"^\d+$"}, "123", True),
        ({"type": "max_length", "value": 3}, "abcd", False),
    ],
)
def test_checks(check: dict[str, object], text: str, ok: bool) -> None:
    assert run_check(check, text) is ok
