"""The gate's decision on a hand-computed case."""

from __future__ import annotations

import pytest

from retrain.checks import run_check
from retrain.gate_rules import DEFAULT_THRESHOLDS, SideMetrics, decide, thresholds_for


def test_hand_computed_pass() -> None:
    serving = SideMetrics(0.50, 0.10, 0.75, [True, False], 2.00, 20.0)
    candidate = SideMetrics(0.75, 0.40, 0.75, [True, True], 2.15, 29.0)
    v = decide(serving, candidate, DEFAULT_THRESHOLDS)
    # NLL ceiling 2.00 * 1.10 = 2.20 > 2.15; length ratio 29/20 = 1.45 <= 1.5; checks equal.
    assert v.passed, v.reasons


def test_hand_computed_rejections() -> None:
    serving = SideMetrics(0.80, 0.50, 0.90, [True, True], 2.00, 20.0)
    candidate = SideMetrics(0.70, 0.40, 0.80, [True, False], 2.30, 31.0)
    v = decide(serving, candidate, DEFAULT_THRESHOLDS)
    assert not v.passed
    text = "\n".join(v.reasons)
    assert "preference accuracy 0.700 < 0.800" in text
    assert "mean reward margin 0.4000 < 0.5000" in text
    assert "golden check pass rate 0.800 < 0.850" in text  # 0.90 - 0.05
    assert "1 hard check(s)" in text
    assert "reference NLL 2.3000 > 2.2000" in text
    assert "1.55x longer" in text  # 31 / 20
    assert len(v.reasons) == 6


def test_missing_sides_are_skipped() -> None:
    v = decide(SideMetrics(), SideMetrics(mean_length=10.0), DEFAULT_THRESHOLDS)
    assert v.passed


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
