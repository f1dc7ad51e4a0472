"""The retraining core: plan rules, and real TRL DPO/KTO rounds on the tiny demo base (CPU).

The synthetic feedback has one learnable rule: the preferred answer ends with the word "always",
the dispreferred one with some other word. The parent (a random demo adapter) does not know it;
a round must teach it, measured on held-out prompts the round never saw.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from feedback.examples import DPORow, KTORow, example_from_json
from gateway.core.errors import InvalidRequest
from retrain.plan import (
    DEFAULT_MIN_KTO_ROWS,
    KTO_WEIGHT_RATIO_RANGE,
    Hyperparameters,
    Method,
    choose_method,
    default_hyperparameters,
    kto_weights,
    make_plan,
    row_kind,
    split_heldout,
)

# --- plan: method choice -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_pairs", "n_up", "n_down", "requested", "method"),
    [
        (30, 0, 0, "auto", "dpo"),  # edits only
        (0, 20, 15, "auto", "kto"),  # thumbs only
        (40, 10, 10, "auto", "dpo"),  # enough pairs, and at least half of the signal
        (12, 6, 6, "auto", "dpo"),  # exactly half
        (12, 10, 10, "auto", "kto"),  # pairs are less than half
        (5, 2, 1, "auto", "kto"),  # fewer pairs than min_pairs
        (40, 0, 0, "kto", "kto"),  # override: edits become KTO rows
        (10, 50, 50, "dpo", "dpo"),  # override: thumbs are dropped
    ],
)
def test_choose_method(n_pairs: int, n_up: int, n_down: int, requested: str, method: str) -> None:
    chosen, reason = choose_method(n_pairs, n_up, n_down, requested)
    assert chosen == method
    assert reason


def test_choose_method_refusals() -> None:
    with pytest.raises(InvalidRequest, match="DPO needs edit pairs"):
        choose_method(0, 30, 30, "dpo")
    with pytest.raises(InvalidRequest, match="unknown method"):
        choose_method(10, 0, 0, "ppo")
    with pytest.raises(InvalidRequest, match="no feedback"):
        choose_method(0, 0, 0, "auto")


# --- plan: KTO weights ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_desirable", "n_undesirable"),
    [(50, 50), (80, 20), (20, 80), (100, 11), (11, 100), (30, 29), (29, 30), (3, 17)],
)
def test_kto_weights_balance_only_the_minority(n_desirable: int, n_undesirable: int) -> None:
    dw, uw = kto_weights(n_desirable, n_undesirable)
    low, high = KTO_WEIGHT_RATIO_RANGE
    assert low <= (dw * n_desirable) / (uw * n_undesirable) <= high
    # The majority keeps weight 1; the minority is raised only when the counts alone fall
    # outside the range (30:29 is already inside it, 29:30 is not).
    raw_ok = low <= n_desirable / n_undesirable <= high
    if n_desirable >= n_undesirable:
        assert dw == 1.0 and (uw == 1.0 if raw_ok else uw > 1.0)
    else:
        assert uw == 1.0 and dw > 1.0


def test_kto_weights_refusals() -> None:
    with pytest.raises(InvalidRequest, match="too little feedback"):
        kto_weights(5, 5)
    assert kto_weights(5, 5, min_rows=10) == (1.0, 1.0)  # the minimum is configurable
    with pytest.raises(InvalidRequest, match="too imbalanced"):
        kto_weights(200, 10)
    assert kto_weights(200, 10, max_imbalance=25)[1] > 1.0  # so is the ratio
    with pytest.raises(InvalidRequest, match="no undesirable"):
        kto_weights(40, 0)
    with pytest.raises(InvalidRequest, match="no desirable"):
        kto_weights(0, 40)


# --- plan: make_plan ------------------------------------------------------------------------


def test_make_plan_kto_converts_edits_and_weights() -> None:
    plan = make_plan(4, 30, 10, "auto")
    assert plan.method == "kto"
    assert plan.counts == {"desirable": 34, "undesirable": 14}
    assert plan.weights is not None
    dw, uw = plan.weights
    assert dw == 1.0 and 1 <= (dw * 34) / (uw * 14) <= 4 / 3
    text = plan.describe()
    assert "KTO" in text and "undesirable" in text and "weighted ratio" in text


def test_make_plan_dpo_and_overrides() -> None:
    plan = make_plan(25, 0, 0, overrides={"learning_rate": 5e-6, "use_dora": True})
    assert plan.method == "dpo" and plan.weights is None
    assert plan.hyperparameters.learning_rate == 5e-6 and plan.hyperparameters.use_dora
    assert plan.hyperparameters.beta == default_hyperparameters("dpo").beta
    assert "DPO" in plan.describe() and "DoRA" in plan.describe()


def test_make_plan_refusals() -> None:
    with pytest.raises(InvalidRequest, match="too little feedback for DPO"):
        make_plan(3, 0, 0)
    with pytest.raises(InvalidRequest, match="too little feedback for KTO"):
        make_plan(0, 6, 6)
    with pytest.raises(InvalidRequest, match="too imbalanced"):
        make_plan(0, 300, 3)
    with pytest.raises(InvalidRequest, match="unknown hyperparameters"):
        make_plan(25, 0, 0, overrides={"learning_rat": 1e-5})
    with pytest.raises(InvalidRequest, match="batch_size"):
        make_plan(0, 20, 20, overrides={"batch_size": 1})


def test_new_adapter_defaults() -> None:
    hp = default_hyperparameters("kto")
    assert (hp.lora_r, hp.lora_alpha, hp.use_dora) == (16, 32, False)
    assert DEFAULT_MIN_KTO_ROWS > 0


# --- plan: rows and the held-out split ------------------------------------------------------


def test_rows_accept_text_and_chat_and_refuse_mixtures() -> None:
    user = [{"role": "user", "content": "hi"}]
    assert DPORow(user, [_assistant("a")], [_assistant("b")]).to_trl()["chosen"] == [
        _assistant("a")
    ]
    assert KTORow("hi", "a", True).to_trl() == {"prompt": "hi", "completion": "a", "label": True}
    assert DPORow("hi", "a", "b").to_kto() == [KTORow("hi", "a", True), KTORow("hi", "b", False)]
    meta = {"completion_id": "cmpl_1", "signal": "edit"}
    for row in (DPORow(user, [_assistant("a")], [_assistant("b")], meta), KTORow("hi", "a", False)):
        assert example_from_json(json.loads(json.dumps(row.to_json()))) == row  # a round's heldout
    assert example_from_json(DPORow("hi", "a", "b", meta).to_json()).meta == meta
    with pytest.raises(InvalidRequest):
        example_from_json({"prompt": "hi", "chosen": [_assistant("a")], "rejected": "b"})
    with pytest.raises(InvalidRequest, match="all plain text or all chat"):
        DPORow(user, "a", [_assistant("b")])
    with pytest.raises(InvalidRequest, match="one assistant message"):
        KTORow(user, [_assistant("a"), _assistant("b")], True)
    with pytest.raises(InvalidRequest, match="one assistant message"):
        KTORow(user, [{"role": "user", "content": "a"}], True)


def test_split_heldout_is_stratified_seeded_and_deterministic() -> None:
    rows = [KTORow(f"p{i}", "a", i % 5 == 0) for i in range(100)]  # 20 desirable, 80 undesirable
    train, held = split_heldout(rows, 0.25, seed=7, key=row_kind)
    assert sorted(held + train, key=lambda r: int(str(r.prompt)[1:])) == rows
    assert sum(r.label for r in held) == 5 and sum(not r.label for r in held) == 20
    assert split_heldout(rows, 0.25, seed=7, key=row_kind) == (train, held)
    assert split_heldout(rows, 0.25, seed=8, key=row_kind)[1] != held
    # A small stratum is still measured, and never emptied.
    few = [KTORow(f"p{i}", "a", i < 2) for i in range(30)]
    _, held_few = split_heldout(few, 0.1, seed=0, key=row_kind)
    assert sum(r.label for r in held_few) == 1
    with pytest.raises(ValueError):
        split_heldout(rows, 1.0, seed=0, key=row_kind)


# --- synthetic feedback ---------------------------------------------------------------------

WORD = "always"
OTHER_WORDS = ["no", "maybe", "never", "yes", "monday", "friday"]
ASKS = [
    "how do I reset my password",
    "can I change my plan",
    "when do you ship",
    "where is my invoice",
    "how long do refunds take",
    "can you help me today",
]
ANSWERS = [
    "Please open settings, choose security, and press reset.",
    "Sure, I can help with that.",
    "We ship within two business days.",
    "Your invoice is attached.",
    "Refunds take five days.",
    "Is there anything else?",
]
# The demo base is a random 64-wide network: a LoRA step moves it far less than it moves a real
# model, so the production default (1e-5) would take hundreds of steps here. Measured with these
# settings over 3 seeds x 4 demo parents: held-out pair accuracy went from <= 6% (parent) to
# 100% (DPO, margins +15..+24 nats) and 81-100% (KTO, margins +3..+12).
TINY_BASE = {"learning_rate": 3e-3, "num_epochs": 5}


def _assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def _pairs(n: int, seed: int, *, chat: bool) -> list[DPORow]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        prompt = f"Customer {i} on {rng.choice(['monday', 'friday'])}: {rng.choice(ASKS)}?"
        answer = rng.choice(ANSWERS)
        chosen, rejected = f"{answer} {WORD}", f"{answer} {rng.choice(OTHER_WORDS)}"
        if chat:
            rows.append(
                DPORow(
                    [{"role": "user", "content": prompt}],
                    [_assistant(chosen)],
                    [_assistant(rejected)],
                )
            )
        else:
            rows.append(DPORow(prompt + "\n", chosen, rejected))
    return rows


def _thumbs(pairs: list[DPORow]) -> list[KTORow]:
    """One thumb per prompt: up on the edit for even rows, down on the original for odd ones."""
    return [
        KTORow(p.prompt, p.chosen, True) if i % 2 == 0 else KTORow(p.prompt, p.rejected, False)
        for i, p in enumerate(pairs)
    ]


# --- training rounds ------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    # Tiny matmuls gain nothing from a second thread, and on a busy 2-core machine OpenMP's
    # spinning threads made a 1 s round take up to 20 s. Results are identical either way.
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@dataclasses.dataclass
class Round:
    result: Any
    parent: Path
    heldout_pairs: list[DPORow]
    events: list[dict[str, Any]]


@pytest.fixture(scope="module")
def dpo_round(
    demo_base: Path, demo_adapters: list[Path], tmp_path_factory: pytest.TempPathFactory
) -> Round:
    from retrain.train import train_round

    train, held = split_heldout(_pairs(64, seed=1, chat=True), 0.25, seed=0, key=row_kind)
    plan = make_plan(len(train), 0, 0, overrides=TINY_BASE)
    assert plan.method == "dpo"
    events: list[dict[str, Any]] = []
    result = train_round(
        demo_base,
        demo_adapters[0],
        plan.method,
        train,
        tmp_path_factory.mktemp("dpo") / "candidate",
        plan.hyperparameters,
        seed=0,
        progress=events.append,
    )
    return Round(result, demo_adapters[0], held, events)


@pytest.fixture(scope="module")
def kto_round(
    demo_base: Path, demo_adapters: list[Path], tmp_path_factory: pytest.TempPathFactory
) -> Round:
    from retrain.train import train_round

    train_pairs, held = split_heldout(_pairs(80, seed=2, chat=False), 0.2, seed=0, key=row_kind)
    rows = _thumbs(train_pairs)
    n_up = sum(r.label for r in rows)
    plan = make_plan(0, n_up, len(rows) - n_up, overrides=TINY_BASE)
    assert plan.method == "kto"
    events: list[dict[str, Any]] = []
    result = train_round(
        demo_base,
        demo_adapters[1],
        plan.method,
        rows,
        tmp_path_factory.mktemp("kto") / "candidate",
        plan.hyperparameters,
        seed=0,
        progress=events.append,
    )
    return Round(result, demo_adapters[1], held, events)


def _compare(base: Path, r: Round) -> tuple[dict[str, float], dict[str, float]]:
    from retrain.evaluate import preference_metrics

    parent = preference_metrics(base, r.parent, r.heldout_pairs)
    candidate = preference_metrics(base, r.result.adapter_dir, r.heldout_pairs)
    return parent, candidate


@pytest.mark.slow
def test_dpo_round_beats_parent_on_heldout_pairs(demo_base: Path, dpo_round: Round) -> None:
    parent, candidate = _compare(demo_base, dpo_round)
    assert candidate["accuracy"] > parent["accuracy"]
    assert candidate["mean_margin"] > parent["mean_margin"]
    # And by a wide margin, not a lucky flicker.
    assert candidate["accuracy"] >= 0.75 and candidate["accuracy"] - parent["accuracy"] >= 0.5
    assert candidate["mean_margin"] > 0 > parent["mean_margin"]


@pytest.mark.slow
def test_kto_round_beats_parent_on_heldout_pairs(demo_base: Path, kto_round: Round) -> None:
    from retrain.evaluate import kto_metrics

    parent, candidate = _compare(demo_base, kto_round)
    assert candidate["accuracy"] > parent["accuracy"]
    assert candidate["mean_margin"] > parent["mean_margin"]
    assert candidate["accuracy"] >= 0.75 and candidate["accuracy"] - parent["accuracy"] >= 0.5
    assert candidate["mean_margin"] > 0 > parent["mean_margin"]
    # The same held-out prompts as thumbs: desirable up and undesirable down, relative to the parent.
    rows = _thumbs(kto_round.heldout_pairs)
    before = kto_metrics(demo_base, kto_round.parent, rows)
    after = kto_metrics(
        demo_base, kto_round.result.adapter_dir, rows, reference_adapter=kto_round.parent
    )
    # (Across 3 seeds x 4 parents: accuracy 0.62-0.94, desirable rewards +8..+20 nats, undesirable
    # ones -0.1..-8; the bounds below hold in all of them.)
    assert after["gap"] > before["gap"]
    assert after["accuracy"] > 0.5
    assert after["mean_reward_desirable"] > 5 > 0 > after["mean_reward_undesirable"]


@pytest.mark.slow
def test_round_reports_metrics_timings_progress(dpo_round: Round, kto_round: Round) -> None:
    for r in (dpo_round, kto_round):
        result = r.result
        assert set(result.timings) == {"load", "dataset", "train", "save"}
        assert all(t >= 0 for t in result.timings.values())
        assert set(result.versions) >= {"torch", "transformers", "peft", "trl"}
        assert {"loss", "train_loss", "rewards/margins"} <= set(result.metrics)
        assert result.metrics["rewards/margins"] > 0
        # One event per step (logging_steps=1), then the end-of-training summary.
        assert result.steps > 0 and len(r.events) == result.steps + 1
        assert all("loss" in e and e["line"].startswith("step ") for e in r.events[:-1])
        assert r.events[-1]["line"].startswith(f"done: {result.steps} steps")
        # The first step scores the unchanged parent against its frozen copy: the reference is
        # the parent, not the base, so every implied reward starts at exactly zero.
        assert r.events[0]["rewards/chosen"] == 0.0 and r.events[0]["rewards/rejected"] == 0.0
    assert "rewards/accuracies" in dpo_round.result.metrics
    assert "kl" in kto_round.result.metrics


@pytest.mark.slow
def test_candidate_differs_loads_back_and_generates(
    demo_base: Path, dpo_round: Round, kto_round: Round
) -> None:
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for r in (dpo_round, kto_round):
        out = r.result.adapter_dir
        assert (out / "adapter_config.json").is_file()
        assert (out / "adapter_model.safetensors").is_file()
        parent = load_file(r.parent / "adapter_model.safetensors")
        candidate = load_file(out / "adapter_model.safetensors")
        assert candidate.keys() == parent.keys()  # the trained adapter only, no "ref" copy
        assert all(not torch.equal(candidate[k], parent[k]) for k in parent)
        config = json.loads((out / "adapter_config.json").read_text())
        assert config["r"] == json.loads((r.parent / "adapter_config.json").read_text())["r"]
        assert config["base_model_name_or_path"] == str(demo_base)

        tokenizer = AutoTokenizer.from_pretrained(demo_base)
        model: Any = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(demo_base), out)
        inputs = tokenizer("Customer 1 on monday: when do you ship?\n", return_tensors="pt")
        generated = model.generate(**inputs, max_new_tokens=6, do_sample=False)
        assert generated.shape[1] > inputs["input_ids"].shape[1]


@pytest.mark.slow
def test_same_seed_same_weights_new_adapter(demo_base: Path, tmp_path: Path) -> None:
    """A new LoRA (no parent), twice with one seed and once with another."""
    import torch
    from safetensors.torch import load_file

    from retrain.train import resolve_precision, train_round

    rows = _thumbs(_pairs(24, seed=3, chat=False))
    hp = dataclasses.replace(default_hyperparameters("kto"), num_epochs=1, learning_rate=3e-3)
    weights = []
    for name, seed in [("a", 11), ("b", 11), ("c", 12)]:
        result = train_round(demo_base, None, "kto", rows, tmp_path / name, hp, seed=seed)
        assert result.precision == resolve_precision("auto", "cpu")
        weights.append(load_file(result.adapter_dir / "adapter_model.safetensors"))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"]) == (16, 32)
    # PEFT saves "all-linear" resolved to module names: every projection of every block.
    targets = {name.rsplit(".", 1)[-1] for name in config["target_modules"]}
    assert targets == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


@pytest.mark.slow
def test_new_dora_adapter(demo_base: Path, tmp_path: Path) -> None:
    from retrain.train import train_round

    hp = Hyperparameters(
        learning_rate=3e-3, num_epochs=1, beta=0.1, use_dora=True, precision="fp32"
    )
    rows = _pairs(8, seed=4, chat=False)
    result = train_round(demo_base, None, "dpo", rows, tmp_path / "d", hp, seed=0)
    assert result.precision == "fp32"
    assert json.loads((tmp_path / "d" / "adapter_config.json").read_text())["use_dora"] is True


def test_train_round_refuses_bad_input(demo_base: Path, tmp_path: Path) -> None:
    from retrain.train import train_round

    hp = default_hyperparameters("dpo")
    with pytest.raises(InvalidRequest, match="DPORow"):
        train_round(demo_base, None, "dpo", [KTORow("p", "a", True)], tmp_path / "x", hp, seed=0)
    mixed = [_pairs(1, seed=0, chat=True)[0], _pairs(1, seed=0, chat=False)[0]]
    with pytest.raises(InvalidRequest, match="mix"):
        train_round(demo_base, None, "dpo", mixed, tmp_path / "x", hp, seed=0)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    with pytest.raises(FileExistsError):
        train_round(demo_base, None, "dpo", _pairs(2, 0, chat=False), tmp_path / "full", hp, seed=0)


# --- evaluation -----------------------------------------------------------------------------


def test_tokenization_matches_trl_and_batching_is_exact(demo_base: Path) -> None:
    from retrain.evaluate import Scorer, completion_logprobs, sequence_logprob, tokenize_pair

    scorer = Scorer.load(demo_base)
    tok = scorer.tokenizer
    # Text: TRL appends EOS to the completion. Chat: the completion is what the template adds
    # after the generation prompt, its end-of-turn marker included.
    _, text_ids = tokenize_pair(tok, "Q: hi\n", "Sure.")
    assert text_ids[-1] == tok.eos_token_id
    user = [{"role": "user", "content": "hi"}]
    prompt_ids, chat_ids = tokenize_pair(tok, user, [_assistant("Sure.")])
    assert (
        prompt_ids
        == tok.apply_chat_template(user, add_generation_prompt=True, return_dict=True)["input_ids"]
    )
    assert tok.decode(chat_ids) == "Sure.<|end|>\n"

    items = [(p.prompt, p.chosen) for p in _pairs(11, seed=5, chat=True)]
    batched = completion_logprobs(scorer.model, tok, items, batch_size=4)
    single = [sequence_logprob(scorer.model, tok, p, c) for p, c in items]
    assert [n for _, n in batched] == [len(tokenize_pair(tok, p, c)[1]) for p, c in items]
    for (logp, _), one in zip(batched, single, strict=True):
        assert logp == pytest.approx(one, abs=1e-4)
    nll = scorer.reference_nll(items)
    assert math.isfinite(nll) and nll == pytest.approx(
        -sum(single) / sum(n for _, n in batched), rel=1e-5
    )


def test_one_load_scores_each_adapter_and_the_bare_base_as_separate_loads_do(
    demo_base: Path, demo_adapters: list[Path]
) -> None:
    """The gate loads the base once with both sides' adapters (``Scorer.load_adapters``):
    each side's numbers must be those of its own load, and the bare base's too."""
    from retrain.evaluate import Scorer

    items = [(p.prompt, p.chosen) for p in _pairs(6, seed=7, chat=True)]
    shared = Scorer.load_adapters(demo_base, {"a": demo_adapters[0], "b": demo_adapters[1]})
    for name, adapter in [("a", demo_adapters[0]), (None, None), ("b", demo_adapters[1])]:
        with shared.use(name) as active:
            got = active.logprobs(items)
        assert got == pytest.approx(Scorer.load(demo_base, adapter).logprobs(items), abs=1e-4)
    with shared.use("a") as active:
        first = active.logprobs(items)
    with shared.use("b") as active:
        assert active.logprobs(items) != pytest.approx(first, abs=1e-3)  # they differ


@pytest.mark.slow
@pytest.mark.parametrize(("method", "chat"), [("dpo", True), ("dpo", False), ("kto", False)])
def test_evaluation_measures_what_trl_trains(
    demo_base: Path, demo_adapters: list[Path], tmp_path: Path, method: Method, chat: bool
) -> None:
    """The first step's logps/chosen and logps/rejected (TRL's own numbers, one batch holding
    every row, before any update) equal our log-probabilities of the same rows under the parent."""
    from retrain.evaluate import Scorer
    from retrain.train import train_round

    pairs = _pairs(8, seed=6, chat=chat)
    rows: list[DPORow] | list[KTORow] = pairs if method == "dpo" else _thumbs(pairs)
    # fp32: the comparison is of the formulas; bf16 autocast would move TRL's side by ~1e-2.
    hp = Hyperparameters(learning_rate=1e-5, num_epochs=1, beta=0.1, batch_size=8, precision="fp32")
    events: list[dict[str, Any]] = []
    train_round(
        demo_base,
        demo_adapters[2],
        method,
        rows,
        tmp_path / "a",
        hp,
        seed=0,
        progress=events.append,
    )
    scorer = Scorer.load(demo_base, demo_adapters[2])
    if method == "dpo":
        chosen = scorer.logprobs([(p.prompt, p.chosen) for p in pairs])
        rejected = scorer.logprobs([(p.prompt, p.rejected) for p in pairs])
    else:
        chosen = scorer.logprobs([(r.prompt, r.completion) for r in _thumbs(pairs) if r.label])
        rejected = scorer.logprobs(
            [(r.prompt, r.completion) for r in _thumbs(pairs) if not r.label]
        )
    assert events[0]["logps/chosen"] == pytest.approx(sum(chosen) / len(chosen), abs=1e-3)
    assert events[0]["logps/rejected"] == pytest.approx(sum(rejected) / len(rejected), abs=1e-3)


# --- methods and recipes ----------------------------------------------------------------------


def test_explicit_pair_methods_and_their_defaults() -> None:
    for method in ("sft", "orpo", "simpo"):
        plan = make_plan(20, 5, 5, method)
        assert plan.method == method and method.upper() in plan.reason
        assert "5 up" not in plan.reason and "10 thumbs are not used" in plan.reason
    assert default_hyperparameters("dpo").sft_weight == 8.0
    assert default_hyperparameters("simpo").beta == 2.0
    hp = default_hyperparameters("dpo")
    assert (hp.learning_rate, hp.lr_scheduler_type, hp.warmup_ratio) == (2e-4, "cosine", 0.03)
    with pytest.raises(InvalidRequest, match="ORPO needs edit pairs"):
        make_plan(0, 20, 20, "orpo")
    with pytest.raises(InvalidRequest, match="unknown method 'rlhf'") as err:
        make_plan(20, 0, 0, "rlhf")
    assert err.value.param == "method"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("learning_rate", 0.0),
        ("learning_rate", 0.5),
        ("num_epochs", 0),
        ("beta", -1.0),
        ("warmup_ratio", 1.0),
        ("lr_scheduler_type", "exotic"),
        ("sft_weight", -0.1),
        ("lora_r", 0),
        ("max_length", 4),
        ("precision", "fp8"),
        ("max_steps", -1),
    ],
)
def test_bad_hyperparameters_are_refused_by_name(field: str, value: object) -> None:
    with pytest.raises(InvalidRequest, match=field) as err:
        make_plan(20, 0, 0, overrides={field: value})
    assert err.value.param == field


def test_large_rounds_are_capped_at_one_pass() -> None:
    """max_steps caps a large round's optimizer steps, but never below one full pass."""
    from retrain.plan import capped_steps

    hp = default_hyperparameters("dpo")  # batch 4, 3 epochs, max_steps 240
    assert capped_steps(hp, 96) is None  # 72 steps: within the cap
    assert capped_steps(hp, 320) is None  # 240 steps: at the cap
    assert capped_steps(hp, 400) == 240  # 300 steps capped; 100 per epoch
    assert capped_steps(hp, 800) == 240  # 600 capped at 240 >= the 200 of one pass
    assert capped_steps(hp, 2000) == 500  # one pass is 500 steps: no row left out
    assert capped_steps(dataclasses.replace(hp, max_steps=0), 2000) is None
    assert capped_steps(dataclasses.replace(hp, gradient_accumulation_steps=2), 2000) == 250
    plan = make_plan(2000, 0, 0)
    assert "500 steps (one pass over the rows" in plan.describe()


def test_training_precision_resolves_per_device() -> None:
    """``auto`` is bf16 on a GPU and on a CPU with native bf16 dot products, fp32 elsewhere;
    an explicit choice is kept."""
    import torch

    from retrain.train import resolve_precision

    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert resolve_precision("auto", "cpu") == ("bf16" if native else "fp32")
    assert resolve_precision("auto", "cuda") == "bf16"
    assert resolve_precision("auto", "cuda:1") == "bf16"
    assert resolve_precision("fp32", "cuda") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"
    assert resolve_precision("auto", "mps") == "fp32"


def test_recipe_files(tmp_path: Path) -> None:
    from retrain.plan import load_recipe

    (tmp_path / "r.json").write_text('{"learning_rate": 1e-4, "num_epochs": 2}')
    (tmp_path / "r.toml").write_text("learning_rate = 5e-5\nsft_weight = 0.5\n")
    (tmp_path / "bad.json").write_text("{nope")
    (tmp_path / "list.json").write_text("[1]")
    assert load_recipe(tmp_path / "r.json") == {"learning_rate": 1e-4, "num_epochs": 2}
    plan = make_plan(20, 0, 0, overrides=load_recipe(tmp_path / "r.toml"))
    assert (plan.hyperparameters.learning_rate, plan.hyperparameters.sft_weight) == (5e-5, 0.5)
    assert "SFT term weight 0.5" in plan.describe()
    with pytest.raises(InvalidRequest, match="not valid"):
        load_recipe(tmp_path / "bad.json")
    with pytest.raises(InvalidRequest, match="expected an object"):
        load_recipe(tmp_path / "list.json")


@pytest.mark.slow
@pytest.mark.parametrize("method", ["sft", "orpo", "simpo"])
def test_other_pair_methods_train_and_move_the_margin(
    demo_base: Path, tmp_path: Path, method: Method
) -> None:
    """Each selectable method trains through TRL and raises the chosen answers' margin."""
    from retrain.evaluate import Scorer
    from retrain.train import train_round

    rows = _pairs(24, seed=9, chat=True)
    hp = dataclasses.replace(default_hyperparameters(method), **TINY_BASE)
    result = train_round(demo_base, None, method, rows, tmp_path / method, hp, seed=0)
    assert result.method == method and result.steps > 0
    before = Scorer.load(demo_base).pair_margins(rows)
    after = Scorer.load(demo_base, result.adapter_dir).pair_margins(rows)
    assert sum(after) / len(after) > sum(before) / len(before) + 1.0


def test_every_hyperparameter_has_a_checked_type() -> None:
    from retrain.plan import _FIELD_TYPES, check_recipe

    assert set(_FIELD_TYPES) == {f.name for f in dataclasses.fields(Hyperparameters)}
    check_recipe({"max_length": 256, "use_dora": True, "lr_scheduler_type": "linear"})
    check_recipe({"beta": 1})  # an int is a float
    with pytest.raises(InvalidRequest) as err:
        check_recipe({"num_epochs": 2.5})
    assert err.value.param == "num_epochs"
    with pytest.raises(InvalidRequest) as err:
        check_recipe({"lora_r": True})
    assert err.value.param == "lora_r"
