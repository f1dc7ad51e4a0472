"""Decide how a retraining round runs: the method, the KTO class weights, the held-out split.

Pure functions on counts and rows (no torch), so ``flywheel retrain --dry-run`` can print the
plan, and refuse a hopeless round, without loading a model.

Rows are ``feedback.examples.KTORow`` and ``DPORow`` (TRL's dataset formats), the one shape a
feedback example has from the export to the gate.

Method rule (``choose_method``), with ``requested="auto"``:

* only edit pairs -> DPO; only thumbs -> KTO;
* both -> DPO when there are at least ``min_pairs`` pairs and the pairs are at least half of the
  signal (``n_pairs >= n_up + n_down``); the thumbs are then left out, since DPO cannot use
  unpaired labels. Otherwise KTO, with each edit split into a desirable row (the edit) and an
  undesirable row (the original), so no feedback is thrown away.

An explicit ``"dpo"`` or ``"kto"`` is honoured, except DPO with no pairs, which is refused.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import tomllib
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeAlias, TypeVar

from feedback.examples import DPORow, KTORow
from gateway.core.errors import InvalidRequest

Method: TypeAlias = Literal["kto", "dpo", "sft", "orpo", "simpo"]
METHODS: tuple[Method, ...] = ("dpo", "kto", "sft", "orpo", "simpo")
# Methods that train on edit pairs (prompt, chosen, rejected); KTO trains on labelled rows.
PAIR_METHODS = frozenset({"dpo", "sft", "orpo", "simpo"})

# Below these a round learns noise: a handful of rows moves a LoRA mostly by chance.
DEFAULT_MIN_PAIRS = 10
DEFAULT_MIN_KTO_ROWS = 20
# The KTO paper still matches DPO with 90% fewer desirable examples (about 1:10) once weighted;
# beyond that the minority class's weight is so large that a few rows dominate every update.
DEFAULT_MAX_IMBALANCE = 10.0
# (desirable_weight * n_desirable) / (undesirable_weight * n_undesirable) must lie in
# [1, 4/3] (KTO paper, Eq. 8; TRL warns outside it). We aim at the middle so float rounding,
# or TRL's two-decimal check, never lands outside.
KTO_WEIGHT_RATIO_RANGE = (1.0, 4.0 / 3.0)
_KTO_TARGET_RATIO = 7.0 / 6.0


def row_kind(row: KTORow | DPORow) -> str:
    """The stratum of a row for ``split_heldout``: desirable, undesirable or pair."""
    if isinstance(row, DPORow):
        return "pair"
    return "desirable" if row.label else "undesirable"


@dataclass(frozen=True)
class Hyperparameters:
    """What a round trains with; the comment above ``DPO_DEFAULTS`` gives the defaults' reasons.

    ``lora_*`` and ``use_dora`` shape a NEW adapter only; continuing a parent keeps its config.
    """

    learning_rate: float
    num_epochs: int
    beta: float
    # A cap on optimizer steps for large rounds: past it the round makes one pass over every
    # row and no more (``capped_steps``). 0: no cap.
    max_steps: int = 240
    batch_size: int = 4
    gradient_accumulation_steps: int = 1
    max_length: int = 512
    warmup_ratio: float = 0.03
    lr_scheduler_type: str = "cosine"
    # DPO: weight of the SFT (NLL on the chosen answer) term beside the preference loss;
    # SimPO: CPO's alpha. 0 turns it off.
    sft_weight: float = 1.0
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    use_dora: bool = False
    # Matrix maths during training: "bf16" (autocast; LoRA weights and optimizer stay float32),
    # "fp32", or "auto": bf16 on a GPU and on a CPU with native bf16 instructions (AVX512-BF16
    # or AMX), fp32 elsewhere. ``retrain.train.resolve_precision`` decides; the round records
    # what was used.
    precision: str = "auto"
    # KTO only; make_plan sets them from the class counts.
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0


# Defaults for LoRA on feedback-sized data (tens to a few thousand rows). The learning rate,
# schedule and adapter shape are the usual LoRA recipe (lr 1e-4 to 2e-4, cosine, 3% warmup,
# r 16, alpha 32, every linear layer of the blocks); each value was then checked on
# SmolLM2-135M-Instruct with bench/bench_learning.py (docs/benchmarks.md, "Learning"), which is
# what justifies them:
# * DPO with an SFT term of weight 8 on the chosen answer. At lr 1e-5 a round changed nothing
#   (0/20 held-out answers followed the users' rule before and after); DPO alone at 2e-4
#   degraded answers into fragments. TRL's DPO loss acts on the sequence's *summed* log-ratios
#   (times beta), its SFT term on the *mean* per-token NLL, so on 50-100-token answers the
#   preference gradient outweighs the SFT one 5-10x; weight 8 brings them level. Measured on
#   the demo loop's 38 edit pairs (30 steps, 8 held-out prompts, rule "open with a greeting"):
#   SFT weight 1: 0/8 follow; weight 8: 5/8, as many as SFT alone; on 120 edits (90 steps)
#   weight 1 reached 100 % but with more steps (docs/benchmarks.md, "Learning").
# * KTO at 1e-4: thumbs carry less signal per row than edits, and KTO has no SFT term to hold
#   the answers' fluency, so it moves more carefully.
# * max_steps 240: every rule of the learning benchmark was learned within 72 steps (120 edits,
#   96 trained on, batch 4, 3 epochs); 240 leaves 3x headroom, and trains a 1,000-edit round
#   (800 trained on) for 240 steps instead of 600, 40 % of the time (docs/benchmarks.md,
#   "Round time"). A capped round still passes over every row at least once.
# * beta 0.1: TRL's default and the DPO and KTO papers' robust value.
# * batch 4: a round has tens to a few hundred rows, so the number of optimizer steps, not the
#   batch's noise, limits what it learns; 9 steps (24 pairs, batch 8, 3 epochs) taught nothing.
#   KTO needs more than one row per batch (its KL estimate pairs rows in a batch).
# * max_length 512 tokens: feedback rows are chat turns; longer rows are truncated, not dropped.
# * new adapters: no dropout (TRL disables it anyway); DoRA off unless asked, since the serving
#   engine must support it. PEFT's "all-linear" leaves lm_head out (TRL refuses it there).
DPO_DEFAULTS = Hyperparameters(learning_rate=2e-4, num_epochs=3, beta=0.1, sft_weight=8.0)
KTO_DEFAULTS = Hyperparameters(learning_rate=1e-4, num_epochs=3, beta=0.1, sft_weight=0.0)
# ORPO's beta is its lambda (weight of the odds-ratio term; the paper's 0.1); SimPO's beta is
# its reward scale (the paper uses 2 to 10) and its SFT term is off unless asked.
_PAIR_DEFAULTS: dict[str, Hyperparameters] = {
    "dpo": DPO_DEFAULTS,
    "sft": dataclasses.replace(DPO_DEFAULTS, sft_weight=0.0),
    "orpo": dataclasses.replace(DPO_DEFAULTS, sft_weight=0.0),
    "simpo": dataclasses.replace(DPO_DEFAULTS, beta=2.0, sft_weight=0.0),
}


def default_hyperparameters(method: Method) -> Hyperparameters:
    """The documented defaults above for ``method``."""
    return KTO_DEFAULTS if method == "kto" else _PAIR_DEFAULTS[method]


def choose_method(
    n_pairs: int,
    n_up: int,
    n_down: int,
    requested: str = "auto",
    *,
    min_pairs: int = DEFAULT_MIN_PAIRS,
) -> tuple[Method, str]:
    """Pick DPO or KTO for this much feedback, and say why (see the module docstring)."""
    if min(n_pairs, n_up, n_down) < 0:
        raise ValueError("feedback counts cannot be negative")
    n_thumbs = n_up + n_down
    if requested in PAIR_METHODS:
        name = requested.upper()
        if n_pairs == 0:
            raise InvalidRequest(
                f"{name} needs edit pairs (a corrected answer next to the original) and there "
                "are none; use KTO for thumbs-only feedback",
                param="method",
            )
        dropped = f"; {n_thumbs} thumbs are not used ({name} needs pairs)" if n_thumbs else ""
        return requested, f"{name} requested: {n_pairs} edit pairs{dropped}"  # type: ignore[return-value]
    if requested == "kto":
        converted = (
            f"; each of {n_pairs} edits becomes a desirable and an undesirable row"
            if n_pairs
            else ""
        )
        return "kto", f"KTO requested: {n_up} up / {n_down} down thumbs{converted}"
    if requested != "auto":
        raise InvalidRequest(
            f"unknown method {requested!r}: expected auto, {', '.join(METHODS)}",
            param="method",
        )
    if n_pairs == 0 and n_thumbs == 0:
        raise InvalidRequest("no feedback to train on")
    if n_thumbs == 0:
        return "dpo", (
            f"only edit pairs ({n_pairs}): an edit is a demonstration and a preference, so DPO "
            "with an SFT term on the edited answer"
        )
    if n_pairs == 0:
        return "kto", f"only thumbs ({n_up} up / {n_down} down): KTO learns from unpaired labels"
    if n_pairs >= min_pairs and n_pairs >= n_thumbs:
        return "dpo", (
            f"{n_pairs} edit pairs are at least {min_pairs} and at least half of the signal "
            f"(vs {n_thumbs} thumbs): DPO on the pairs, thumbs left out"
        )
    if n_pairs < min_pairs:
        why = f"only {n_pairs} edit pairs (DPO wants at least {min_pairs})"
    else:
        why = f"{n_pairs} edit pairs are less than half of the signal ({n_thumbs} thumbs)"
    return "kto", f"{why}: KTO on everything, each edit as a desirable and an undesirable row"


def kto_weights(
    n_desirable: int,
    n_undesirable: int,
    *,
    min_rows: int = DEFAULT_MIN_KTO_ROWS,
    max_imbalance: float = DEFAULT_MAX_IMBALANCE,
) -> tuple[float, float]:
    """(desirable_weight, undesirable_weight) that balance the KTO loss, or InvalidRequest.

    ``(dw * n_desirable) / (uw * n_undesirable)`` must lie in the KTO paper's [1, 4/3]. When the
    counts alone already do, both weights stay 1.0; otherwise only the minority class's weight
    rises, to put the ratio at 7/6.
    """
    total = n_desirable + n_undesirable
    if total < min_rows:
        raise InvalidRequest(
            f"too little feedback for KTO: {total} rows ({n_desirable} desirable, "
            f"{n_undesirable} undesirable), at least {min_rows} needed"
        )
    if n_desirable == 0 or n_undesirable == 0:
        missing = "undesirable (thumbs-down)" if n_undesirable == 0 else "desirable (thumbs-up)"
        raise InvalidRequest(f"KTO needs both kinds of feedback and there are no {missing} rows")
    imbalance = max(n_desirable, n_undesirable) / min(n_desirable, n_undesirable)
    if imbalance > max_imbalance:
        raise InvalidRequest(
            f"feedback too imbalanced for KTO: {n_desirable} desirable vs {n_undesirable} "
            f"undesirable ({imbalance:.1f}:1, at most {max_imbalance:g}:1 allowed); collect "
            "more of the minority kind"
        )
    low, high = KTO_WEIGHT_RATIO_RANGE
    if low <= n_desirable / n_undesirable <= high:
        return 1.0, 1.0
    if n_desirable < n_undesirable:
        return _KTO_TARGET_RATIO * n_undesirable / n_desirable, 1.0
    return 1.0, n_desirable / (_KTO_TARGET_RATIO * n_undesirable)


@dataclass(frozen=True)
class Plan:
    """What a round will do; ``describe()`` is what ``--dry-run`` prints."""

    method: Method
    reason: str
    n_pairs: int
    n_up: int
    n_down: int
    n_train_rows: int  # rows the trainer sees: pairs for DPO, labelled rows for KTO
    hyperparameters: Hyperparameters
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def weights(self) -> tuple[float, float] | None:
        if self.method != "kto":
            return None
        return self.hyperparameters.desirable_weight, self.hyperparameters.undesirable_weight

    def describe(self) -> str:
        hp = self.hyperparameters
        lines = [
            f"method: {self.method.upper()} ({self.reason})",
            f"feedback: {self.n_pairs} edit pairs, {self.n_up} thumbs up, {self.n_down} thumbs down",
        ]
        if self.method == "kto":
            nd, nu = self.counts["desirable"], self.counts["undesirable"]
            ratio = (hp.desirable_weight * nd) / (hp.undesirable_weight * nu)
            lines.append(f"training rows: {nd} desirable, {nu} undesirable")
            lines.append(
                f"weights: desirable {hp.desirable_weight:.4g}, undesirable "
                f"{hp.undesirable_weight:.4g} (weighted ratio {ratio:.3f}, target [1, 4/3])"
            )
        else:
            lines.append(f"training rows: {self.n_train_rows} pairs")
        sft = (
            f", SFT term weight {hp.sft_weight:g}" if hp.sft_weight and self.method != "sft" else ""
        )
        steps = capped_steps(hp, self.n_train_rows)
        epochs = f"{hp.num_epochs} epochs"
        if steps is not None:
            epochs = f"{steps} steps (one pass over the rows: {hp.num_epochs} epochs would pass "
            epochs += f"max_steps {hp.max_steps})"
        lines.append(
            f"hyperparameters: lr {hp.learning_rate:g} ({hp.lr_scheduler_type}, warmup "
            f"{hp.warmup_ratio:g}), {epochs}, beta {hp.beta:g}{sft}, "
            f"batch {hp.batch_size} x {hp.gradient_accumulation_steps}, max_length {hp.max_length}"
        )
        lines.append(
            f"new adapters: LoRA r={hp.lora_r} alpha={hp.lora_alpha} all-linear"
            f"{' DoRA' if hp.use_dora else ''} (a parent adapter keeps its own config)"
        )
        return "\n".join(lines)


def make_plan(
    n_pairs: int,
    n_up: int,
    n_down: int,
    requested: str = "auto",
    *,
    overrides: Mapping[str, Any] | None = None,
    min_pairs: int = DEFAULT_MIN_PAIRS,
    min_kto_rows: int = DEFAULT_MIN_KTO_ROWS,
    max_imbalance: float = DEFAULT_MAX_IMBALANCE,
) -> Plan:
    """Choose the method, check there is enough (and balanced enough) data, fix the hyperparameters.

    ``overrides`` replaces default hyperparameters by name; KTO weights given there win over the
    computed ones.
    """
    method, reason = choose_method(n_pairs, n_up, n_down, requested, min_pairs=min_pairs)
    overrides = dict(overrides or {})
    unknown = set(overrides) - {f.name for f in dataclasses.fields(Hyperparameters)}
    if unknown:
        raise InvalidRequest(f"unknown hyperparameters: {', '.join(sorted(unknown))}")
    hp = default_hyperparameters(method)
    counts: dict[str, int]
    if method in PAIR_METHODS:
        if n_pairs < min_pairs:
            raise InvalidRequest(
                f"too little feedback for {method.upper()}: {n_pairs} edit pairs, at least "
                f"{min_pairs} needed"
            )
        counts = {"pairs": n_pairs}
        n_rows = n_pairs
    else:
        n_desirable, n_undesirable = n_up + n_pairs, n_down + n_pairs
        dw, uw = kto_weights(
            n_desirable, n_undesirable, min_rows=min_kto_rows, max_imbalance=max_imbalance
        )
        hp = dataclasses.replace(hp, desirable_weight=dw, undesirable_weight=uw)
        counts = {"desirable": n_desirable, "undesirable": n_undesirable}
        n_rows = n_desirable + n_undesirable
    hp = dataclasses.replace(hp, **typed_overrides(overrides))
    check_hyperparameters(hp)
    if method == "kto" and hp.batch_size < 2:
        raise InvalidRequest("KTO needs batch_size >= 2 (its KL estimate pairs rows in a batch)")
    return Plan(method, reason, n_pairs, n_up, n_down, n_rows, hp, counts)


def load_recipe(path: Path) -> dict[str, Any]:
    """Hyperparameter overrides from a JSON or TOML file: ``{"learning_rate": 1e-4, ...}``.

    Keys are ``Hyperparameters`` field names; a ``method`` key is not allowed here (it is a
    flag). Unknown keys are refused by ``make_plan``, naming them.
    """
    text = path.read_text()
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise InvalidRequest(f"recipe {path}: not valid {path.suffix or 'JSON'} ({exc})") from exc
    if not isinstance(data, dict):
        raise InvalidRequest(f"recipe {path}: expected an object of hyperparameters")
    return dict(data)


def check_recipe(recipe: Mapping[str, Any]) -> None:
    """Refuse a stored recipe that no round could use: unknown fields or bad values."""
    unknown = set(recipe) - {f.name for f in dataclasses.fields(Hyperparameters)}
    if unknown:
        raise InvalidRequest(
            f"unknown hyperparameters: {', '.join(sorted(unknown))}", param="retrain_recipe"
        )
    check_hyperparameters(dataclasses.replace(DPO_DEFAULTS, **typed_overrides(recipe)))


_FIELD_TYPES: dict[str, type] = {
    "learning_rate": float, "beta": float, "warmup_ratio": float, "sft_weight": float,
    "lora_dropout": float, "desirable_weight": float, "undesirable_weight": float,
    "num_epochs": int, "max_steps": int, "batch_size": int, "gradient_accumulation_steps": int,
    "max_length": int, "lora_r": int, "lora_alpha": int,
    "lr_scheduler_type": str, "use_dora": bool, "precision": str,
}  # fmt: skip


def typed_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Overrides checked against each field's type (an int is a float; a bool is neither)."""
    typed = {}
    for name, value in overrides.items():
        want = _FIELD_TYPES.get(name)
        if want is None:
            raise InvalidRequest(f"unknown hyperparameters: {name}", param="retrain_recipe")
        ok = isinstance(value, want) and not (want is not bool and isinstance(value, bool))
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            raise InvalidRequest(
                f"hyperparameter {name}={value!r} must be a {want.__name__}", param=name
            )
        typed[name] = value
    return typed


_SCHEDULES = ("cosine", "linear", "constant", "constant_with_warmup")
PRECISIONS = ("auto", "bf16", "fp32")


def check_hyperparameters(hp: Hyperparameters) -> None:
    """Refuse values no trainer can use, naming the field (a 400 with ``param``)."""
    problems = [
        ("learning_rate", not 0 < hp.learning_rate <= 1e-2, "must be in (0, 0.01]"),
        ("num_epochs", not 1 <= hp.num_epochs <= 100, "must be 1 to 100"),
        ("max_steps", hp.max_steps < 0, "must be >= 0 (0: no cap)"),
        ("beta", not 0 < hp.beta <= 100, "must be in (0, 100]"),
        ("batch_size", not 1 <= hp.batch_size <= 1024, "must be 1 to 1024"),
        ("gradient_accumulation_steps", hp.gradient_accumulation_steps < 1, "must be >= 1"),
        ("max_length", not 16 <= hp.max_length <= 32768, "must be 16 to 32768"),
        ("warmup_ratio", not 0 <= hp.warmup_ratio < 1, "must be in [0, 1)"),
        ("lr_scheduler_type", hp.lr_scheduler_type not in _SCHEDULES, f"one of {_SCHEDULES}"),
        ("sft_weight", not 0 <= hp.sft_weight <= 100, "must be in [0, 100]"),
        ("lora_r", not 1 <= hp.lora_r <= 256, "must be 1 to 256"),
        ("lora_alpha", hp.lora_alpha <= 0, "must be > 0"),
        ("lora_dropout", not 0 <= hp.lora_dropout < 1, "must be in [0, 1)"),
        ("precision", hp.precision not in PRECISIONS, f"one of {PRECISIONS}"),
    ]
    for name, bad, why in problems:
        if bad:
            raise InvalidRequest(f"hyperparameter {name}={getattr(hp, name)!r} {why}", param=name)


def capped_steps(hp: Hyperparameters, n_rows: int) -> int | None:
    """The optimizer steps a round on ``n_rows`` trains for when ``max_steps`` caps it, or None
    when ``num_epochs`` passes stay within the cap. A capped round still makes one full pass,
    so no row is left out: max(max_steps, the steps of one epoch)."""
    per_epoch = max(
        1, math.ceil(math.ceil(n_rows / hp.batch_size) / hp.gradient_accumulation_steps)
    )
    if hp.max_steps == 0 or per_epoch * hp.num_epochs <= hp.max_steps:
        return None
    return max(hp.max_steps, per_epoch)


T = TypeVar("T")


def split_heldout(
    rows: Sequence[T], fraction: float, seed: int, key: Callable[[Any], Hashable]
) -> tuple[list[T], list[T]]:
    """Split into (train, heldout), stratified by ``key`` (e.g. ``row_kind``), seeded.

    Each stratum gives ``round(n * fraction)`` rows to held-out, at least one when it has two or
    more rows (so a small minority class is still measured) and never all of them. The result
    depends only on the rows' order, the fraction and the seed; both parts keep the input order.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"held-out fraction must be in [0, 1), got {fraction}")
    strata: dict[Hashable, list[int]] = {}
    for index, row in enumerate(rows):
        strata.setdefault(key(row), []).append(index)
    rng = random.Random(seed)
    heldout: set[int] = set()
    # Visit strata in a fixed order (by their text), so the seed alone decides the draw.
    for stratum in sorted(strata, key=repr):
        indices = strata[stratum]
        n_held = round(len(indices) * fraction)
        if fraction > 0 and len(indices) >= 2:
            n_held = max(n_held, 1)
        n_held = min(n_held, len(indices) - 1)
        heldout.update(rng.sample(indices, n_held))
    train = [row for i, row in enumerate(rows) if i not in heldout]
    held = [row for i, row in enumerate(rows) if i in heldout]
    return train, held
