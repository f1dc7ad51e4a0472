"""Golden-set checks on one generated answer."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import jsonschema


@dataclass(frozen=True)
class CheckResult:
    index: int
    type: str
    hard: bool
    passed: bool


def run_check(check: dict[str, Any], output: str) -> bool:
    kind = check["type"]
    if kind == "json":
        try:
            json.loads(output)
        except json.JSONDecodeError:
            return False
        return True
    if kind == "json_schema":
        try:
            jsonschema.validate(json.loads(output), check["schema"])
        except (json.JSONDecodeError, jsonschema.ValidationError):
            return False
        return True
    if kind == "contains":
        return str(check["value"]) in output
    if kind == "not_contains":
        return str(check["value"]) not in output
    if kind == "regex":
        return re.search(check["pattern"], output) is not None
    if kind == "max_length":
        return len(output) <= int(check["value"])
    raise ValueError(f"unknown check type {kind!r}")


def run_checks(checks: list[dict[str, Any]], output: str) -> list[CheckResult]:
    return [
        CheckResult(i, c["type"], bool(c.get("hard", False)), run_check(c, output))
        for i, c in enumerate(checks)
    ]
