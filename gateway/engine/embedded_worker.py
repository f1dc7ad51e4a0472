"""The engine thread: it alone touches the model, runs adapter loads and decodes waves.

Everything that changes the model (loading, deleting, activating adapters) and every forward
pass happens on this one thread, so none of them needs a lock.  Work arrives two ways: rows
to generate, and jobs (adapter loads and deletes), which run between decode steps.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from peft import LoraConfig, PeftConfig, PeftModel

from gateway.core.errors import AdapterLoadRefused, EngineError
from gateway.engine.embedded_batch import Group, Row, raw_logprobs, sample
from gateway.engine.embedded_fast import prepack_linears
from gateway.engine.embedded_lora import AdapterRouter

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class RowStats:
    """How one generation ended, kept for metrics and tests."""

    request_id: str
    adapter: str | None
    wave: int
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" | "length" | "cancelled" | "error"
    token_ids: tuple[int, ...]


class EngineWorker:
    """Owns the model on a dedicated thread; see the module docstring."""

    def __init__(self, model_path: str, *, device: str, dtype: torch.dtype, max_batch_size: int):
        self._model_path = model_path
        self.device = torch.device(device)
        self._dtype = dtype
        self._max_batch_size = max_batch_size
        self._cond = threading.Condition()
        self._rows: deque[Row] = deque()
        self._jobs: deque[tuple[Callable[[], Any], Future[Any]]] = deque()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="flywheel-engine", daemon=True)
        self.started: Future[None] = Future()
        self.model: Any = None
        self.tokenizer: Any = None
        self.eos_ids: frozenset[int] = frozenset()
        self.pad_id = 0
        self._dora: set[str] = set()
        self._router = AdapterRouter()
        self.packed_linears = 0  # linear layers with oneDNN-prepacked weights (embedded_fast)
        # Counters, written by the engine thread only.
        self.waves = 0
        self.forward_passes = 0
        self.joins = 0  # rows that joined a wave already decoding
        self.recent: deque[RowStats] = deque(maxlen=256)

    # --- called from the event loop ------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()

    def join(self) -> None:
        self._thread.join()

    def submit(self, rows: list[Row]) -> None:
        with self._cond:
            if not self._stopping:
                self._rows.extend(rows)
                self._cond.notify()
                return
        for row in rows:
            row.emit(EngineError("the engine is stopping"))

    def call(self, fn: Callable[[], T]) -> Future[T]:
        """Run ``fn`` on the engine thread between decode steps."""
        future: Future[T] = Future()
        with self._cond:
            if self._stopping:
                future.set_exception(EngineError("the engine is stopping"))
                return future
            self._jobs.append((fn, future))
            self._cond.notify()
        return future

    # --- jobs: run on the engine thread ----------------------------------------------------

    def load_adapter(self, name: str, path: Path) -> None:
        """Load the LoRA (or DoRA) adapter at ``path`` as ``name``, or raise AdapterLoadRefused."""
        try:
            config = PeftConfig.from_pretrained(str(path))
            if not isinstance(config, LoraConfig):
                raise ValueError(f"it is a {config.peft_type} adapter; only LoRA is served")
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(str(path), adapter_name=name)
            else:
                self.model = PeftModel.from_pretrained(self.model, str(path), adapter_name=name)
        except Exception as exc:
            self._forget(name)
            raise AdapterLoadRefused(f"could not load adapter {name!r}: {exc}") from exc
        finally:
            if isinstance(self.model, PeftModel):
                self.model.eval()
                self._router.attach(self.model)  # a load may have wrapped more layers
        if config.use_dora:
            self._dora.add(name)

    def delete_adapter(self, name: str) -> None:
        self._forget(name)
        if isinstance(self.model, PeftModel):
            self._router.attach(self.model)

    def _forget(self, name: str) -> None:
        if isinstance(self.model, PeftModel) and name in self.model.peft_config:
            self.model.delete_adapter(name)
            if not self.model.peft_config:
                # PEFT keeps the deleted last adapter as the PeftModel's active one, and every
                # later forward pass fails with KeyError: unwrap back to the bare base instead
                # (unload() removes the LoRA layers without merging them).
                self._router.detach()
                self.model = self.model.unload()
        self._dora.discard(name)

    # --- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._load_model()
        except BaseException as exc:
            self.started.set_exception(exc)
            return
        self.started.set_result(None)
        while (rows := self._next_wave()) is not None:
            try:
                self._run_wave(rows)
            except Exception as exc:  # a bug here must not kill the thread and hang clients
                log.exception("wave failed")
                for row in rows:
                    if row.finish_reason is None:
                        self._fail(row, EngineError(f"generation failed: {exc}"))
        self._fail_everything()

    def _load_model(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if self.device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
            # Leave a core to the event loop: when every core runs a spinning OpenMP thread,
            # each wake-up of the loop stalls the whole forward pass (decode got 10x slower).
            torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) - 1))
        self.tokenizer = AutoTokenizer.from_pretrained(self._model_path)
        model: Any = AutoModelForCausalLM.from_pretrained(self._model_path, dtype=self._dtype)
        self.model = model.to(self.device).eval()
        head = model.get_output_embeddings()
        if head is not None:
            # transformers hands the head a strided slice, the last position of each row; a
            # linear layer on a non-contiguous 3-D input copies the whole weight once per row
            # (prefill of 8 SmolLM2 prompts in bfloat16: 0.9 s, against 7 ms contiguous).
            head.register_forward_pre_hook(_contiguous_input)
        if self.device.type == "cpu" and self._dtype == torch.bfloat16:
            self.packed_linears = prepack_linears(self.model, batch_hint=self._max_batch_size)
        eos = model.generation_config.eos_token_id
        eos_list = eos if isinstance(eos, list) else [eos]
        eos_list.append(self.tokenizer.eos_token_id)
        self.eos_ids = frozenset(i for i in eos_list if i is not None)
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else min(self.eos_ids, default=0)

    def _next_wave(self) -> list[Row] | None:
        """Block until there are rows to run (running jobs meanwhile); None once stopping."""
        while True:
            self._run_jobs()
            with self._cond:
                if self._stopping:
                    return None
                if self._jobs:
                    continue
                rows = self._take_rows()
                if rows:
                    return rows
                self._cond.wait()

    def _take_rows(self, limit: int | None = None) -> list[Row]:
        rows: list[Row] = []
        limit = self._max_batch_size if limit is None else limit
        while self._rows and len(rows) < limit:
            row = self._rows.popleft()
            if row.cancelled:
                self._record(row, "cancelled")
            else:
                rows.append(row)
        return rows

    def _run_jobs(self) -> None:
        while True:
            with self._cond:
                if not self._jobs:
                    return
                fn, future = self._jobs.popleft()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

    def _run_wave(self, rows: list[Row]) -> None:
        self.waves += 1
        try:
            self._decode_wave(self._group(rows))
        finally:
            self._router.release()  # the rows' gathered adapter weights

    def _decode_wave(self, groups: list[Group]) -> None:
        with torch.inference_mode():
            for group in groups:
                self._step(group, group.prefill)
        while groups := [g for g in groups if g.rows]:
            self._run_jobs()
            if self._stopping:
                for row in (row for group in groups for row in group.rows):
                    self._fail(row, EngineError("the engine stopped"))
                return
            self._join(groups)
            with torch.inference_mode():
                for group in groups:
                    self._drop_cancelled(group)
                    if group.rows:
                        self._step(group, group.decode)

    def _join(self, groups: list[Group]) -> None:
        """Rows that arrived while the wave runs join it: prefilled in a pass of their own,
        then merged into the group they fit (or decoded beside it), up to max_batch_size."""
        room = self._max_batch_size - sum(len(g.rows) for g in groups)
        if room <= 0 or not self._rows:  # unlocked peek: a row missed now joins next step
            return
        with self._cond:
            rows = self._take_rows(room)
        if not rows:
            return
        self.joins += len(rows)
        new = self._group(rows)
        with torch.inference_mode():
            for group in new:
                self._step(group, group.prefill)
        for group in new:
            target = next((g for g in groups if g.can_merge(group)), None)
            if target is not None:
                target.merge(group)
            elif group.rows:
                groups.append(group)

    def _group(self, rows: list[Row]) -> list[Group]:
        by_dora: dict[str, list[Row]] = {}
        mixed: list[Row] = []
        for row in rows:
            if row.adapter in self._dora:
                by_dora.setdefault(row.adapter, []).append(row)
            else:
                mixed.append(row)
        groups = (
            [Group(mixed, dora_adapter=None, pad_id=self.pad_id, router=self._router)]
            if mixed
            else []
        )
        for name, dora_rows in by_dora.items():
            groups.append(
                Group(dora_rows, dora_adapter=name, pad_id=self.pad_id, router=self._router)
            )
        return groups

    def _step(self, group: Group, forward: Callable[[Any, torch.device], torch.Tensor]) -> None:
        """One forward pass for ``group``, then sample, stream, and drop finished rows."""
        try:
            logits = forward(self.model, self.device)
        except Exception as exc:
            log.exception("forward pass failed")
            for row in group.rows:
                self._fail(row, EngineError(f"generation failed: {exc}"))
            group.keep([])
            return
        finally:
            self.forward_passes += 1
        logprobs = raw_logprobs(logits, group.rows)  # before sample() edits the logits
        picked = sample(logits, group.rows)
        for i, (row, token_id) in enumerate(zip(group.rows, picked, strict=True)):
            if isinstance(token_id, Exception):
                self._fail(row, EngineError(f"sampling failed: {token_id}"))
                continue
            try:
                chunk = row.advance(token_id, self.eos_ids, logprobs.get(i))
            except RuntimeError as exc:  # the row's grammar refused the token
                self._fail(row, EngineError(f"generation failed: {exc}"))
                continue
            if row.finish_reason is not None:
                self._record(row, row.finish_reason)  # before the client can see the end
            if chunk is not None:
                row.emit(chunk)
        group.keep([i for i, row in enumerate(group.rows) if row.finish_reason is None])

    def _drop_cancelled(self, group: Group) -> None:
        for row in group.rows:
            if row.cancelled:
                self._record(row, "cancelled")
        group.keep([i for i, row in enumerate(group.rows) if not row.cancelled])

    def _record(self, row: Row, finish_reason: str) -> None:
        stats = RowStats(
            request_id=row.request_id,
            adapter=row.adapter,
            wave=self.waves,
            prompt_tokens=len(row.prompt_ids),
            completion_tokens=len(row.token_ids),
            finish_reason=finish_reason,
            token_ids=tuple(row.token_ids),
        )
        self.recent.append(stats)

    def _fail(self, row: Row, exc: EngineError) -> None:
        row.finish_reason = "error"
        self._record(row, "error")
        row.emit(exc)

    def _fail_everything(self) -> None:
        """On stop: every row and job still waiting gets an error instead of a hang."""
        with self._cond:
            rows, jobs = list(self._rows), list(self._jobs)
            self._rows.clear()
            self._jobs.clear()
        for row in rows:
            self._fail(row, EngineError("the engine stopped"))
        for _, future in jobs:
            if future.set_running_or_notify_cancel():
                future.set_exception(EngineError("the engine stopped"))


def _contiguous_input(module: Any, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    if args and isinstance(args[0], torch.Tensor) and not args[0].is_contiguous():
        return (args[0].contiguous(), *args[1:])
    return None
