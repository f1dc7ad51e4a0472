"""Train one round: a LoRA adapter from feedback rows, with one of TRL's trainers.

Edit pairs train with DPO plus an SFT term by default (or SFT, ORPO, SimPO when asked); thumbs
with KTO. ``retrain.plan`` chooses the method and says why.

Continuing a parent: the parent is loaded trainable as PEFT's ``default`` adapter and handed to
the trainer without a ``peft_config``; TRL then adds a frozen copy of it named ``ref`` and uses
that as the reference model, so the round is regularised towards the parent, not the base. Only
``default`` is saved. Without a parent, TRL wraps the base in a fresh LoRA and the reference is
the base itself (adapters disabled).

Reproducible on CPU: the same rows, hyperparameters and seed give bit-identical weights.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import peft
import torch
import transformers
import trl
from datasets import Dataset
from peft import LoraConfig, PeftModel
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PrinterCallback,
    TrainerCallback,
    set_seed,
)

# trl's lazy __init__ hides its exports from mypy.
from trl import (  # type: ignore[attr-defined]
    DPOConfig,
    DPOTrainer,
    KTOConfig,
    KTOTrainer,
    SFTConfig,
    SFTTrainer,
)

from feedback.examples import DPORow, KTORow
from gateway.core.errors import InvalidRequest
from retrain.plan import METHODS, Hyperparameters, Method, capped_steps

Progress = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class TrainResult:
    """What a round produced: the adapter, TRL's last logged metrics, timings, versions."""

    adapter_dir: Path
    method: Method
    seed: int
    n_rows: int
    steps: int
    # The last value of every metric TRL logged per step (loss, rewards/margins, kl, ...), then
    # the end-of-training summary: train_loss (mean over the run), train_runtime, ...
    metrics: dict[str, float]
    # Seconds: load (model + tokenizer), dataset (building and tokenizing it: TRL tokenizes in
    # the trainer's constructor), train, save.
    timings: dict[str, float]
    versions: dict[str, str]
    precision: str = "fp32"  # what the matrix maths ran in: "bf16" (autocast) or "fp32"
    log_history: list[dict[str, float]] = field(default_factory=list)


STEP_LOG_MAX = 500  # entries kept per round: enough for a curve, small enough for a row


def step_log(history: Sequence[dict[str, Any]]) -> list[dict[str, float]]:
    """A round's training curves: TRL's per-step logs (``step``, ``loss``, ``rewards/margins``,
    ``rewards/accuracies``, ... as the method logs them), without the end-of-training summary,
    finite numbers only (JSON columns refuse NaN), at most STEP_LOG_MAX entries, evenly spaced
    with the first and last kept."""
    steps = [
        {
            key: float(value)
            for key, value in entry.items()
            if isinstance(value, int | float)
            and not isinstance(value, bool)
            and math.isfinite(value)
        }
        for entry in history
        if "train_runtime" not in entry and "step" in entry
    ]
    if len(steps) <= STEP_LOG_MAX:
        return steps
    last = len(steps) - 1
    keep = sorted({round(i * last / (STEP_LOG_MAX - 1)) for i in range(STEP_LOG_MAX)})
    return [steps[i] for i in keep]


def library_versions() -> dict[str, str]:
    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "trl": trl.__version__,
        "datasets": datasets.__version__,
    }


class ProgressCallback(TrainerCallback):
    """Hands every training log (loss, rewards/margins, ...) to ``progress``, plus a ``line``
    with the step, the loss and an ETA from the mean step time so far."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.started = time.perf_counter()

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.started = time.perf_counter()

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        logs = dict(logs or {})
        step, total = state.global_step, state.max_steps
        elapsed = time.perf_counter() - self.started
        eta = elapsed / step * (total - step) if step else None
        event = {"step": step, "max_steps": total, "elapsed_s": elapsed, "eta_s": eta, **logs}
        if "train_runtime" in logs:  # the end-of-training summary
            event["line"] = (
                f"done: {step} steps in {logs['train_runtime']:.1f}s, "
                f"mean loss {logs['train_loss']:.4f}"
            )
        else:
            shown = [f"{k}={logs[k]:.4f}" for k in ("loss", "rewards/margins") if k in logs]
            left = f" eta {eta:.0f}s" if eta is not None else ""
            event["line"] = f"step {step}/{total} " + " ".join(shown) + left
        self.progress(event)


def _check_rows(method: Method, rows: Sequence[KTORow | DPORow]) -> None:
    if not rows:
        raise InvalidRequest("no rows to train on")
    expected = KTORow if method == "kto" else DPORow
    if not all(isinstance(row, expected) for row in rows):
        raise InvalidRequest(f"{method.upper()} trains on {expected.__name__} rows only")
    if len({isinstance(row.prompt, list) for row in rows}) > 1:
        raise InvalidRequest("rows mix plain-text and chat prompts; a round needs one format")


def resolve_precision(requested: str, device: str) -> str:
    """``"bf16"`` or ``"fp32"`` for a recipe's ``precision`` on ``device``.

    ``auto`` takes bf16 on a GPU, and on a CPU only where it has native bf16 dot products
    (AVX512-BF16 or AMX): there autocast halves a step's time (measured on SmolLM2 with LoRA,
    docs/benchmarks.md, "Round time"); elsewhere bf16 is emulated and slower than fp32.
    """
    if requested != "auto":
        return requested
    if device.startswith("cuda"):
        return "bf16"
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return "bf16" if device == "cpu" and native else "fp32"


def _config_args(
    hp: Hyperparameters, scratch: str, seed: int, device: str, precision: str, n_rows: int
) -> dict[str, Any]:
    """The TrainingArguments every method shares (TRL's configs all extend them)."""
    return {
        # Set only when the cap applies: Trainer's max_steps > 0 replaces the epochs.
        "max_steps": capped_steps(hp, n_rows) or -1,
        "output_dir": scratch,
        "learning_rate": hp.learning_rate,
        "lr_scheduler_type": hp.lr_scheduler_type,
        "num_train_epochs": hp.num_epochs,
        "per_device_train_batch_size": hp.batch_size,
        "gradient_accumulation_steps": hp.gradient_accumulation_steps,
        "warmup_steps": hp.warmup_ratio,  # a float below 1 is a fraction of the steps
        "max_length": hp.max_length,
        "seed": seed,
        "data_seed": seed,
        "use_cpu": device == "cpu",
        # On CPU, Trainer runs forward and loss under torch.autocast(bfloat16): the matmuls in
        # bf16, the LoRA weights, gradients and AdamW state in float32.
        "bf16": precision == "bf16",
        # Recompute activations only where memory is short (a GPU); on CPU it only costs time.
        # (transformers 5.23 renamed gradient_checkpointing; TRL reads the mirrored old name.)
        "activation_checkpointing": device.startswith("cuda"),
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": [],
        "disable_tqdm": True,
    }


def _trainer(
    method: Method,
    model: Any,
    tokenizer: Any,
    rows: Sequence[KTORow] | Sequence[DPORow],
    hp: Hyperparameters,
    peft_config: LoraConfig | None,
    scratch: str,
    seed: int,
    device: str,
    callbacks: list[TrainerCallback],
) -> Any:
    """The TRL trainer for ``method``; one config + trainer pair per method, as TRL keeps them."""
    precision = resolve_precision(hp.precision, device)
    args = _config_args(hp, scratch, seed, device, precision, len(rows))
    common = {
        "model": model,
        "processing_class": tokenizer,
        "peft_config": peft_config,
        "callbacks": callbacks,
    }
    if method == "kto":
        # KTO reads its data in order (its KL term pairs each row with a batch neighbour's
        # completion), so shuffle here, seeded, or feedback stored by label makes one-class
        # batches.
        shuffled = [row for row in rows if isinstance(row, KTORow)]
        random.Random(seed).shuffle(shuffled)
        config = KTOConfig(
            **args,
            beta=hp.beta,
            desirable_weight=hp.desirable_weight,
            undesirable_weight=hp.undesirable_weight,
        )
        dataset = Dataset.from_list([row.to_trl() for row in shuffled])
        return KTOTrainer(args=config, train_dataset=dataset, **common)
    pairs = [row for row in rows if isinstance(row, DPORow)]
    if method == "sft":
        # Supervised on the preferred answers only, loss on the completion tokens.
        sft = SFTConfig(**args, completion_only_loss=True)
        data = [{"prompt": row.prompt, "completion": row.chosen} for row in pairs]
        return SFTTrainer(args=sft, train_dataset=Dataset.from_list(data), **common)
    dataset = Dataset.from_list([row.to_trl() for row in pairs])
    if method == "dpo":
        # The preference loss plus an SFT (NLL) term on the chosen answer: an edit is a
        # demonstration as well as a preference, and DPO alone lowers the likelihood of both
        # answers (docs/retrain.md, "Why DPO alone collapses").
        losses, weights = ["sigmoid"], [1.0]
        if hp.sft_weight > 0:
            losses, weights = ["sigmoid", "sft"], [1.0, hp.sft_weight]
        dpo = DPOConfig(
            **args,
            beta=hp.beta,
            loss_type=losses,
            loss_weights=weights,
            # The reference never changes during a round: score it once, not once per epoch.
            precompute_ref_log_probs=True,
        )
        return DPOTrainer(args=dpo, train_dataset=dataset, **common)
    # Reference-free pair methods from TRL's experimental package.
    from trl.experimental.cpo import CPOConfig, CPOTrainer
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    if method == "orpo":
        # ORPO's one-stage loss: NLL on chosen plus a log-odds-ratio penalty (beta = lambda).
        orpo = ORPOConfig(**args, beta=hp.beta)
        return ORPOTrainer(args=orpo, train_dataset=dataset, **common)
    # SimPO: length-normalised, reference-free margin loss (CPO with loss_type="simpo"); the
    # SFT term's weight is CPO's alpha.
    simpo = CPOConfig(**args, beta=hp.beta, loss_type="simpo", cpo_alpha=hp.sft_weight)
    return CPOTrainer(args=simpo, train_dataset=dataset, **common)


def train_round(
    base_model: str | Path,
    parent_adapter: Path | None,
    method: Method,
    rows: Sequence[KTORow] | Sequence[DPORow],
    output_dir: Path,
    hyperparams: Hyperparameters,
    seed: int,
    device: str = "cpu",
    progress: Progress | None = None,
) -> TrainResult:
    """Train a LoRA on ``rows`` and save it to ``output_dir`` as a PEFT adapter directory.

    ``output_dir`` must not exist, or be empty; the adapter is written to a sibling temporary
    directory and renamed into place, so a failed round never leaves half an adapter behind.
    """
    if method not in METHODS:
        raise InvalidRequest(
            f"unknown method {method!r}: expected one of {', '.join(METHODS)}", param="method"
        )
    _check_rows(method, rows)
    if output_dir.exists() and any(output_dir.iterdir()):
        raise FileExistsError(f"{output_dir} already exists and is not empty")
    timings: dict[str, float] = {}

    # Per-step progress goes to ``progress``; the libraries' own bars would flood a log.
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    started = time.perf_counter()
    set_seed(seed)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    model: Any = AutoModelForCausalLM.from_pretrained(base_model, dtype=dtype)
    peft_config = None
    if parent_adapter is not None:
        model = PeftModel.from_pretrained(model, parent_adapter, is_trainable=True)
    else:
        peft_config = LoraConfig(
            r=hyperparams.lora_r,
            lora_alpha=hyperparams.lora_alpha,
            lora_dropout=hyperparams.lora_dropout,
            target_modules="all-linear",
            use_dora=hyperparams.use_dora,
            task_type="CAUSAL_LM",
        )
    timings["load"] = time.perf_counter() - started

    callbacks: list[TrainerCallback] = [ProgressCallback(progress)] if progress else []
    with tempfile.TemporaryDirectory(prefix="flywheel-trl-") as scratch:
        started = time.perf_counter()
        trainer = _trainer(
            method,
            model,
            tokenizer,
            rows,
            hyperparams,
            peft_config,
            scratch,
            seed,
            device,
            callbacks,
        )
        # disable_tqdm makes Trainer print every log dict to stdout; progress reports them.
        trainer.remove_callback(PrinterCallback)
        timings["dataset"] = time.perf_counter() - started

        started = time.perf_counter()
        output = trainer.train()
        timings["train"] = time.perf_counter() - started

    started = time.perf_counter()
    trained = trainer.model
    # Record the base this round trained on, not whatever path the parent was trained against.
    trained.peft_config["default"].base_model_name_or_path = str(base_model)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}-", dir=output_dir.parent))
    try:
        # Only the trained adapter: with a parent, the model also holds TRL's frozen "ref" copy.
        trained.save_pretrained(staging, selected_adapters=["default"])
        if output_dir.exists():
            output_dir.rmdir()
        os.replace(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    timings["save"] = time.perf_counter() - started

    history = [dict(entry) for entry in trainer.state.log_history]
    metrics: dict[str, float] = {}
    for entry in history:
        if "train_runtime" not in entry:  # per-step logs first, the summary last
            metrics.update(entry)
    metrics.update(output.metrics)
    return TrainResult(
        adapter_dir=output_dir,
        method=method,
        seed=seed,
        n_rows=len(rows),
        steps=output.global_step,
        metrics=metrics,
        timings=timings,
        versions=library_versions(),
        precision=resolve_precision(hyperparams.precision, device),
        log_history=history,
    )
