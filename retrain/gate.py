"""The eval gate: compare a candidate version with the serving version on the same items.

(a) preference accuracy and mean reward margin on the round's held-out feedback;
(b) golden-set check pass rate (and hard checks), on greedy answers from the embedded engine,
    the same code path that serves them;
(c) negative log-likelihood of the golden reference answers;
(d) mean answer length.
The decision itself is retrain/gate_rules.py.  The report is stored in ``gate_reports`` and the
candidate becomes ``passed`` (signed, when a signing key is at hand) or ``rejected``.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapters.base_models import BaseModel, resolve_base
from adapters.golden import golden_for_gate
from adapters.promotion import adapter_ref
from adapters.registry import get_adapter, get_version
from adapters.signing import adapter_signer
from feedback.examples import DPORow, KTORow, example_from_json
from gateway.core import audit, metrics
from gateway.core.config import Settings
from gateway.core.db.models import AdapterVersion, GateReport, TrainingRound
from gateway.core.db.session import Database
from gateway.core.errors import Conflict, InvalidRequest
from gateway.core.ids import new_id
from gateway.core.tenants import get_tenant
from gateway.engine.base import AdapterRef, GenerationRequest, SamplingParams
from retrain.checks import run_checks
from retrain.gate_rules import (
    Improvement,
    SideMetrics,
    Verdict,
    decide,
    summary,
    thresholds_for,
)
from retrain.stats import permutation_test, sign_test

if TYPE_CHECKING:
    from retrain.evaluate import Scorer  # torch, transformers, PEFT: imported when scoring

log = logging.getLogger("flywheel.gate")


@dataclass(frozen=True)
class GateOutcome:
    report_id: str
    passed: bool
    reasons: list[str]
    summary: str
    signed: bool
    candidate_version: int
    serving_version: int | None


def _prompt_of(item: dict[str, Any]) -> tuple[list[dict[str, Any]] | None, str | None]:
    return (item.get("messages"), None) if "messages" in item else (None, item["prompt"])


def _scoring_prompt(item: dict[str, Any]) -> Any:
    """The item's prompt as the scorer takes it: its chat messages, or its plain text."""
    messages, prompt = _prompt_of(item)
    return messages or prompt


async def _generate_all(
    base: BaseModel, settings: Settings, refs: list[AdapterRef | None], items: list[dict[str, Any]]
) -> list[list[tuple[str, int]]]:
    """Greedy answers (text, tokens) of each adapter for each golden item, in one engine."""
    from gateway.engine.embedded import EmbeddedEngine  # deferred: torch, transformers

    # No verifier: the candidate is not signed until it passes; both adapters are this
    # process's own files, read from the artifact store.
    engine = EmbeddedEngine.from_settings(
        settings, base.path, base.name, max_loras=max(4, len(refs))
    )
    started = time.perf_counter()
    await engine.start()
    log.info("gate: engine started, %.1f s", time.perf_counter() - started)
    try:

        async def one(ref: AdapterRef | None, item: dict[str, Any], i: int) -> tuple[str, int]:
            messages, prompt = _prompt_of(item)
            request = GenerationRequest(
                request_id=f"gate-{i}-{ref.engine_name if ref else 'base'}",
                adapter=ref,
                sampling=SamplingParams(max_tokens=settings.gate_max_tokens, temperature=0.0),
                messages=messages,
                prompt=prompt,
            )
            text, tokens = [], 0
            async for chunk in engine.generate(request):
                text.append(chunk.text)
                if chunk.finish_reason is not None:
                    tokens = chunk.completion_tokens
            return "".join(text), tokens

        # Every version's items at once: the engine decodes them in shared passes (mixed
        # adapters in one batch), as it serves tenants.
        flat = await asyncio.gather(
            *(one(ref, it, i) for ref in refs for i, it in enumerate(items))
        )
        n = len(items)
        return [list(flat[k * n : (k + 1) * n]) for k in range(len(refs))]
    finally:
        await engine.stop()


def _golden_side(items: list[dict[str, Any]], answers: list[tuple[str, int]]) -> SideMetrics:
    checks_total, checks_passed, hard = 0, 0, []
    for item, (text, _) in zip(items, answers, strict=True):
        for result in run_checks(item.get("checks", []), text):
            checks_total += 1
            checks_passed += result.passed
            if result.hard:
                hard.append(result.passed)
    return SideMetrics(
        check_pass_rate=checks_passed / checks_total if checks_total else None,
        hard_checks_passed=hard,
        mean_length=sum(t for _, t in answers) / len(answers) if answers else None,
    )


# Cap on the desirable x undesirable comparisons made from held-out KTO rows.
MAX_KTO_COMPARISONS = 2000


@dataclass
class Scored:
    """One side's held-out scores: summary metrics plus the per-row numbers the tests pair."""

    prefs: dict[str, float] | None
    nll: float | None
    margins: list[float]  # edit pairs: log p(edit) - log p(original), per held-out row
    desirable: list[float]  # thumbs: log p of each held-out answer, by label
    undesirable: list[float]


def _score(scorer: Scorer, heldout: Heldout, references: list[tuple[Any, str]]) -> Scored:
    """One side's held-out preferences and golden reference NLL, with ``scorer``'s active
    adapter."""
    prefs, margins, good, bad = None, [], [], []
    if heldout.pairs:
        margins = scorer.pair_margins(heldout.pairs)
        prefs = {
            "accuracy": sum(m > 0 for m in margins) / len(margins),
            "mean_margin": sum(margins) / len(margins),
        }
    elif heldout.desirable and heldout.undesirable:
        good = scorer.logprobs([(r.prompt, r.completion) for r in heldout.desirable])
        bad = scorer.logprobs([(r.prompt, r.completion) for r in heldout.undesirable])
        prefs = _kto_preferences(good, bad)
    nll = scorer.reference_nll(references) if references else None
    return Scored(prefs, nll, margins, good, bad)


def _kto_preferences(good: list[float], bad: list[float]) -> dict[str, float]:
    """Unpaired rows: accuracy is the share of (desirable, undesirable) comparisons where the
    desirable answer is the more likely one; the margin is the gap of the two class means."""
    comparisons = [(g, b) for g in good for b in bad][:MAX_KTO_COMPARISONS]
    return {
        "accuracy": sum(g > b for g, b in comparisons) / len(comparisons),
        "mean_margin": sum(good) / len(good) - sum(bad) / len(bad),
    }


def improvement(serving: Scored, candidate: Scored) -> Improvement:
    """Is the candidate better than the serving version on held-out feedback, beyond noise?"""
    if serving.margins:
        diffs = [c - s for c, s in zip(candidate.margins, serving.margins, strict=True)]
        wins, trials, p = sign_test(diffs)
        return Improvement("sign", p, len(diffs), wins, trials)
    if serving.desirable and serving.undesirable:
        # How much each answer's log-probability moved from serving to candidate: thumbed-up
        # answers should gain more than thumbed-down ones.
        up = [c - s for c, s in zip(candidate.desirable, serving.desirable, strict=True)]
        down = [c - s for c, s in zip(candidate.undesirable, serving.undesirable, strict=True)]
        return Improvement("permutation", permutation_test(up, down), len(up) + len(down))
    return Improvement("none", 1.0, 0)


def typical_nll(token_logprobs: Sequence[Sequence[float]]) -> float | None:
    """The median negative log-likelihood of all the tokens of a side's answers.

    The median, not the mean: a house rule adds a few tokens the base would never write (an
    opening line, a sign-off, an email address), which lift the mean by up to 0.8 nats per
    token on SmolLM2, while the typical token stays ordinary English (the median moves by 0.3
    at most); word salad or fragments move the typical token itself (+6.7 nats). Measured on
    every rule of bench/learning_data.py (docs/gate.md).
    """
    nlls = [-lp for answer in token_logprobs for lp in answer]
    return statistics.median(nlls) if nlls else None


def _fluency(scorer: Scorer, items: list[dict[str, Any]], answers: list[str]) -> float | None:
    """A side's typical token NLL (``typical_nll``) of its golden answers under ``scorer``
    (the bare base)."""
    from retrain.evaluate import completion_token_logprobs  # deferred: torch

    pairs: list[tuple[Any, str]] = [
        (_scoring_prompt(it), text) for it, text in zip(items, answers, strict=True) if text.strip()
    ]
    scored = completion_token_logprobs(scorer.model, scorer.tokenizer, pairs) if pairs else []
    return typical_nll(scored)


def _score_sides(
    base: BaseModel,
    settings: Settings,
    adapter_dirs: list[Path | None],
    heldout: Heldout,
    items: list[dict[str, Any]],
    answers: list[list[str]],
) -> tuple[list[Scored], list[float | None]]:
    """Each side's held-out and reference scores (with its adapter; None: the bare base) and
    the fluency of its golden answers (under the bare base), from one load of the base."""
    from retrain.evaluate import Scorer  # deferred: torch, transformers, PEFT

    names = [f"side{i}" if d is not None else None for i, d in enumerate(adapter_dirs)]
    scorer = Scorer.load_adapters(
        base.path,
        {n: d for n, d in zip(names, adapter_dirs, strict=True) if n and d},
        device=settings.device,
    )
    references = [(_scoring_prompt(it), it["reference"]) for it in items if "reference" in it]
    scores = []
    for name in names:
        started = time.perf_counter()
        with scorer.use(name) as active:
            scores.append(_score(active, heldout, references))
        log.info(
            "gate: %s scored on %d held-out rows and %d references, %.1f s",
            name or "the bare base",
            heldout.size,
            len(references),
            time.perf_counter() - started,
        )
    with scorer.use(None) as bare:
        fluency = [_fluency(bare, items, side) for side in answers]
    return scores, fluency


@dataclass
class Heldout:
    pairs: list[DPORow]
    desirable: list[KTORow]
    undesirable: list[KTORow]

    @property
    def size(self) -> int:
        return len(self.pairs) + len(self.desirable) + len(self.undesirable)


def heldout_of(round_: TrainingRound | None) -> Heldout:
    """The round's held-out feedback: DPO pairs, or KTO rows split by label."""
    held = Heldout([], [], [])
    for stored in round_.heldout if round_ is not None else []:
        row = example_from_json(stored)
        if isinstance(row, DPORow):
            held.pairs.append(row)
        else:
            (held.desirable if row.label else held.undesirable).append(row)
    return held


async def evaluate(
    settings: Settings,
    base: BaseModel,
    serving: AdapterVersion | None,
    candidate: AdapterVersion,
    items: list[dict[str, Any]],
    heldout: Heldout,
    thresholds: dict[str, float],
) -> Verdict:
    refs = [adapter_ref(serving) if serving else None, adapter_ref(candidate)]
    started = time.perf_counter()
    answers = await _generate_all(base, settings, refs, items)
    log.info(
        "gate: golden answers, %d items x %d versions, %.1f s",
        len(items),
        len(refs),
        time.perf_counter() - started,
    )
    started = time.perf_counter()
    dirs = [Path(v.path) if v else None for v in (serving, candidate)]
    texts = [[text for text, _ in side] for side in answers]
    scores, fluency = await asyncio.to_thread(
        _score_sides, base, settings, dirs, heldout, items, texts
    )
    log.info("gate: scoring, %.1f s", time.perf_counter() - started)
    sides = []
    for side_answers, scored, fluent in zip(answers, scores, fluency, strict=True):
        side = _golden_side(items, side_answers)
        if scored.prefs is not None:
            side.preference_accuracy = scored.prefs["accuracy"]
            side.mean_margin = scored.prefs["mean_margin"]
        side.reference_nll = scored.nll
        side.fluency_nll = fluent
        sides.append(side)
    return decide(sides[0], sides[1], thresholds, improvement(scores[0], scores[1]))


async def run_gate(
    db: Database,
    settings: Settings,
    *,
    tenant: str,
    adapter: str,
    version: int,
    round_id: str | None = None,
    actor: str = "gate",
) -> GateOutcome:
    async with db.session() as session:
        t = await get_tenant(session, tenant)
        a = await get_adapter(session, t.id, adapter)
        candidate = await get_version(session, a, version)
        if candidate.state == "rejected":
            raise Conflict(f"{adapter}@{version} was already rejected by the gate")
        if a.active_version_id == candidate.id:
            raise InvalidRequest(f"{adapter}@{version} is the serving version; nothing to compare")
        serving = (
            await session.get(AdapterVersion, a.active_version_id) if a.active_version_id else None
        )
        round_ = await session.get(TrainingRound, round_id) if round_id else None
        cutoff = round_.data_cutoff if round_ is not None else candidate.created_at
        golden = await golden_for_gate(session, a.id, cutoff)
        thresholds = thresholds_for(t.gate_thresholds)
    base = await asyncio.to_thread(resolve_base, settings)
    heldout = heldout_of(round_)
    verdict = await evaluate(
        settings, base, serving, candidate, list(golden.items), heldout, thresholds
    )
    text = summary(verdict)
    signed = False
    async with db.transaction() as session:
        row = await session.get(AdapterVersion, candidate.id)
        assert row is not None
        row.state = "passed" if verdict.passed else "rejected"
        if verdict.passed:
            signed = await asyncio.to_thread(_sign, settings, row)
        report = GateReport(
            id=new_id("gate"),
            tenant_id=t.id,
            adapter_id=a.id,
            candidate_version_id=candidate.id,
            serving_version_id=serving.id if serving else None,
            golden_set_id=golden.id,
            round_id=round_id,
            passed=verdict.passed,
            reasons=verdict.reasons,
            report={
                "thresholds": verdict.thresholds,
                "serving": verdict.serving,
                "candidate": verdict.candidate,
                "golden_set_version": golden.version,
                "golden_set_hash": golden.content_hash,
                "heldout_rows": heldout.size,
                "improvement": verdict.improvement,
                "signed": signed,
            },
            summary=text,
        )
        session.add(report)
        audit.record(
            session,
            actor=actor,
            action="gate.passed" if verdict.passed else "gate.rejected",
            target=f"{adapter}@{version}",
            tenant_id=t.id,
            detail={"reasons": verdict.reasons},
        )
    log.info("gate %s@%d: %s", adapter, version, "passed" if verdict.passed else "rejected")
    metrics.GATE_OUTCOMES.labels("passed" if verdict.passed else "rejected").inc()
    return GateOutcome(
        report.id,
        verdict.passed,
        verdict.reasons,
        text,
        signed,
        candidate.version,
        serving.version if serving else None,
    )


def _sign(settings: Settings, version: AdapterVersion) -> bool:
    """Sign a passing candidate with the ops key when one is configured here."""
    signer = adapter_signer(settings)
    if signer is None:
        log.warning("no signing key here: %s stays unsigned and cannot be loaded", version.id)
        return False
    version.signature_path = str(signer(Path(version.path)))
    return True
