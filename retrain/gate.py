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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters.golden import golden_for_gate
from adapters.promotion import adapter_ref
from adapters.registry import get_adapter, get_version
from gateway import metrics
from gateway.bootstrap import BaseModel, adapter_signer, resolve_base
from gateway.config import Settings
from gateway.db.models import AdapterVersion, GateReport, TrainingRound
from gateway.db.session import Database
from gateway.engine.base import AdapterRef, GenerationRequest, SamplingParams
from gateway.errors import Conflict, InvalidRequest
from gateway.ids import new_id
from gateway.services import audit
from gateway.services.tenants import get_tenant
from retrain.checks import run_checks
from retrain.gate_rules import SideMetrics, Verdict, decide, summary, thresholds_for
from retrain.plan import DPORow

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


async def _generate_all(
    base: BaseModel, settings: Settings, refs: list[AdapterRef | None], items: list[dict[str, Any]]
) -> list[list[tuple[str, int]]]:
    """Greedy answers (text, tokens) of each adapter for each golden item, in one engine."""
    from gateway.engine.embedded import EmbeddedEngine

    engine = EmbeddedEngine(
        base.path,
        base_model_name=base.name,
        device=settings.device,
        dtype=settings.dtype,
        max_batch_size=settings.max_batch_size,
        max_loras=max(4, len(refs)),
        max_model_len=settings.max_model_len,
    )
    await engine.start()
    try:

        async def one(ref: AdapterRef | None, item: dict[str, Any], i: int) -> tuple[str, int]:
            messages, prompt = _prompt_of(item)
            request = GenerationRequest(
                request_id=f"gate-{i}",
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

        results = []
        for ref in refs:
            # All items of one adapter at once: the engine batches them into one pass.
            results.append(
                list(await asyncio.gather(*(one(ref, it, i) for i, it in enumerate(items))))
            )
        return results
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


def _score(
    base: BaseModel,
    settings: Settings,
    adapter_dir: Path | None,
    heldout: Heldout,
    references: list[tuple[Any, str]],
) -> tuple[dict[str, float] | None, float | None]:
    from retrain.evaluate import Scorer

    scorer = Scorer.load(base.path, adapter_dir, device=settings.device)
    prefs = None
    if heldout.pairs:
        prefs = scorer.preference_metrics(heldout.pairs)
    elif heldout.desirable and heldout.undesirable:
        prefs = _kto_preferences(scorer, heldout)
    nll = scorer.reference_nll(references) if references else None
    return prefs, nll


def _kto_preferences(scorer: Any, heldout: Heldout) -> dict[str, float]:
    """Unpaired rows: accuracy is the share of (desirable, undesirable) comparisons where the
    desirable answer is the more likely one; the margin is the gap of the two class means."""
    good = scorer.logprobs(heldout.desirable)
    bad = scorer.logprobs(heldout.undesirable)
    comparisons = [(g, b) for g in good for b in bad][:MAX_KTO_COMPARISONS]
    return {
        "accuracy": sum(g > b for g, b in comparisons) / len(comparisons),
        "mean_margin": sum(good) / len(good) - sum(bad) / len(bad),
    }


@dataclass
class Heldout:
    pairs: list[DPORow]
    desirable: list[tuple[Any, Any]]
    undesirable: list[tuple[Any, Any]]

    @property
    def size(self) -> int:
        return len(self.pairs) + len(self.desirable) + len(self.undesirable)


def heldout_of(round_: TrainingRound | None) -> Heldout:
    """The round's held-out feedback: DPO pairs, or KTO rows split by label."""
    held = Heldout([], [], [])
    for row in round_.heldout if round_ is not None else []:
        if "chosen" in row:
            held.pairs.append(DPORow(row["prompt"], row["chosen"], row["rejected"]))
        elif row.get("label"):
            held.desirable.append((row["prompt"], row["completion"]))
        else:
            held.undesirable.append((row["prompt"], row["completion"]))
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
    answers = await _generate_all(base, settings, refs, items)
    references = [
        (_prompt_of(it)[0] or _prompt_of(it)[1], it["reference"])
        for it in items
        if "reference" in it
    ]
    sides = []
    for version, side_answers in zip((serving, candidate), answers, strict=True):
        side = _golden_side(items, side_answers)
        adapter_dir = Path(version.path) if version else None
        prefs, nll = await asyncio.to_thread(
            _score, base, settings, adapter_dir, heldout, references
        )
        if prefs is not None:
            side.preference_accuracy = prefs["accuracy"]
            side.mean_margin = prefs["mean_margin"]
        side.reference_nll = nll
        sides.append(side)
    return decide(sides[0], sides[1], thresholds)


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
