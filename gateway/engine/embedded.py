"""The embedded engine: one base model and many LoRA adapters, in-process on transformers + PEFT.

Scheduling: when the engine thread is free it takes every waiting request (up to
``max_batch_size``) and decodes them together, one forward pass per step, until the last of
them finishes (a *wave*).  Requests that arrive meanwhile join the wave between two steps:
they are prefilled in a pass of their own and merged into the running batch (continuous
batching, as vLLM does; before, they waited for the wave to end, and HTTP requests sent
together, which arrive milliseconds apart, often split into two waves).  Rows for different
adapters share the pass through PEFT's mixed-adapter batches (``adapter_names``, routed by
embedded_lora), except DoRA adapters, which PEFT refuses to mix: each DoRA adapter's rows get
their own pass in the same wave.  Finished and cancelled rows leave the batch at once, so a
wave never waits on a client that has gone.

Requests submitted in the same event-loop iteration reach the engine thread together, so
requests started concurrently (``asyncio.gather``) share a wave from its first step.

Threads: the event loop owns the adapter registry (which adapters are resident, their LRU
order, requests in flight); the engine thread (embedded_worker) owns the model.  Chunks
travel back through ``loop.call_soon_threadsafe`` into one ``asyncio.Queue`` per request.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import time
from collections.abc import AsyncGenerator, Iterable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from jinja2 import TemplateError

from gateway.core import metrics
from gateway.core.config import Settings
from gateway.core.errors import EngineError, EngineUnavailable, InvalidRequest
from gateway.engine.base import (
    AdapterRef,
    GenerationChunk,
    GenerationRequest,
    ReplicaStats,
    Verifier,
    is_demo_base,
)
from gateway.engine.capabilities import EMBEDDED
from gateway.engine.embedded_batch import Emit, Row, Totals
from gateway.engine.embedded_fast import native_bf16_cpu
from gateway.engine.embedded_grammar import Constraint, Grammars, RowGrammar, constraint_for
from gateway.engine.embedded_logits import row_logits
from gateway.engine.embedded_text import StreamText
from gateway.engine.embedded_tools import ToolCallReader
from gateway.engine.embedded_worker import EngineWorker, RowStats
from gateway.engine.residency import Residency

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype: str, device: str, base_model: str | Path | None = None) -> torch.dtype:
    """``auto`` is bfloat16 off the CPU, and on a CPU with bfloat16 instructions (AVX512-BF16,
    AMX) for a real base; float32 on other CPUs (bfloat16 is emulated there, and slow) and for
    the tiny demo base (its steps are Python overhead, and its tests compare exact tokens).
    """
    if dtype == "auto":
        if device != "cpu":
            return torch.bfloat16
        demo = base_model is not None and is_demo_base(Path(base_model))
        return torch.bfloat16 if native_bf16_cpu() and not demo else torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use auto, {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


class EmbeddedEngine:
    """In-process multi-LoRA engine; implements gateway.engine.base.Engine."""

    capabilities = EMBEDDED  # docs/api.md has the table

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        base_path: Path,
        base_name: str,
        *,
        verifier: Verifier | None = None,
        max_loras: int | None = None,
    ) -> EmbeddedEngine:
        """The one way the app, the CLI, offline swaps and the gate build this engine."""
        return cls(
            base_path,
            base_model_name=base_name,
            device=settings.device,
            dtype=settings.dtype,
            max_batch_size=settings.max_batch_size,
            max_loras=max_loras or settings.max_loras,
            max_model_len=settings.max_model_len,
            verifier=verifier,
        )

    def __init__(
        self,
        base_model: str | Path,
        *,
        base_model_name: str,
        device: str = "cpu",
        dtype: str = "auto",
        max_batch_size: int = 16,
        max_loras: int = 64,
        max_model_len: int = 2048,
        verifier: Verifier | None = None,
    ) -> None:
        self.base_model_name = base_model_name
        self._base_model = str(base_model)
        self._device = device
        self._dtype = resolve_dtype(dtype, device, base_model)
        self._max_batch_size = max_batch_size
        self.max_model_len = max_model_len
        self._verifier = verifier
        self._worker: EngineWorker | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tokenizer: Any = None
        # Long prompts are encoded on a thread of their own, with a tokenizer of its own: a
        # 1 MB prompt takes ~0.7 s to encode, which on the event loop stalled every other
        # tenant's stream.  Short ones (most) stay on the loop, where the hop would cost more
        # than the encoding and rows submitted together still start in one wave.  A fast
        # tokenizer used from two threads at once fails ("Already borrowed"), hence one
        # instance per thread (the engine thread decodes with a third).
        self._encoder = concurrent.futures.ThreadPoolExecutor(1, "flywheel-encode")
        self._thread_tokenizer: Any = None
        self._longest_token = 0  # characters; bounds a prompt's tokens from below, for free
        self._grammars: Grammars | None = None  # used on the encoder thread only
        self._outbox: list[Row] = []
        self._residency = Residency(max_loras)  # the same book-keeping as a vLLM replica's
        self._idle_waiters: dict[str, asyncio.Event] = {}
        # Metrics.
        self.loads = 0
        self.evictions = 0
        self.last_load_seconds = 0.0

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the tokenizer and the model (on the engine thread) and start serving."""
        if self._worker is not None:
            return
        from transformers import AutoTokenizer

        self._loop = asyncio.get_running_loop()
        self._encoder = concurrent.futures.ThreadPoolExecutor(1, "flywheel-encode")
        worker = EngineWorker(
            self._base_model,
            device=self._device,
            dtype=self._dtype,
            max_batch_size=self._max_batch_size,
        )
        worker.start()
        self._tokenizer = await asyncio.to_thread(AutoTokenizer.from_pretrained, self._base_model)
        self._thread_tokenizer = await asyncio.to_thread(
            AutoTokenizer.from_pretrained, self._base_model
        )
        self._longest_token = max(1, *map(len, self._tokenizer.get_vocab()))
        await asyncio.wrap_future(worker.started)
        self._grammars = Grammars(
            self._thread_tokenizer, worker.model.config.vocab_size, worker.eos_ids
        )
        self._worker = worker

    async def stop(self) -> None:
        """Stop the engine thread; unfinished generations end with an EngineError."""
        worker = self._worker
        if worker is None:
            return
        self._flush()
        self._worker = None
        worker.stop()
        await asyncio.to_thread(worker.join)
        self._encoder.shutdown(wait=False, cancel_futures=True)
        self._residency.clear()

    def ready(self) -> bool:
        return self._worker is not None

    # --- metrics -------------------------------------------------------------------------------

    @property
    def waves(self) -> int:
        return self._worker.waves if self._worker else 0

    @property
    def forward_passes(self) -> int:
        return self._worker.forward_passes if self._worker else 0

    @property
    def recent(self) -> list[RowStats]:
        """How recent generations ended (bounded), oldest first."""
        return list(self._worker.recent) if self._worker else []

    # --- adapters ------------------------------------------------------------------------------

    @property
    def max_loras(self) -> int:
        return self._residency.budget

    def loaded_adapters(self) -> list[str]:
        return self._residency.names()

    def stats(self) -> dict[str, ReplicaStats]:
        return {"embedded": ReplicaStats(len(self._residency), self.loads, self.evictions)}

    async def load_adapter(self, adapter: AdapterRef) -> None:
        """Verify and load ``adapter``; idempotent; concurrent calls for one name load once."""
        worker = self._require_worker()
        name = adapter.engine_name
        if self._touch(name):
            return
        async with self._residency.lock(name):
            if self._touch(name):
                return
            if self._verifier is not None:
                await asyncio.to_thread(self._verifier, adapter)
            started = time.perf_counter()
            await asyncio.wrap_future(worker.call(partial(worker.load_adapter, name, adapter.path)))
            self.last_load_seconds = time.perf_counter() - started
            metrics.ADAPTER_LOAD_SECONDS.labels("embedded").observe(self.last_load_seconds)
            self.loads += 1
            # Loaded first, reserved after: unlike a replica across HTTP, a load here cannot
            # fail half-way, and the adapters it displaces were idle when it finished.
            victims = self._residency.reserve(name, str(adapter.path)).evict_first
            self._residency.confirm(name, verified=self._verifier is not None)
        self._unload(victims)

    async def unload_adapter(self, engine_name: str) -> None:
        """Delete an adapter once no request is using it."""
        worker = self._require_worker()
        while True:
            # Wait for idleness *outside* the name's lock: a request counts itself in flight
            # before it may wait on that lock to load the adapter again, so waiting under the
            # lock deadlocks (seen as a hung swap-under-load test).
            while self._residency.in_flight(engine_name):
                idle = self._idle_waiters.setdefault(engine_name, asyncio.Event())
                await idle.wait()
            async with self._residency.lock(engine_name):
                if self._residency.in_flight(engine_name):
                    continue  # a request came for it meanwhile: wait for that one too
                if engine_name not in self._residency:
                    return
                self._residency.drop(engine_name)
                await asyncio.wrap_future(worker.call(partial(worker.delete_adapter, engine_name)))
                return

    def _touch(self, name: str) -> bool:
        if name not in self._residency:
            return False
        self._residency.touch(name)
        return True

    def _unload(self, victims: Iterable[str]) -> None:
        """Delete evicted adapters from the model, in the background.

        Fire and forget: the engine thread runs jobs in order, so a later reload of the same
        name cannot overtake its delete.
        """
        worker = self._worker
        for victim in victims:
            self.evictions += 1
            if worker is not None:
                worker.call(partial(worker.delete_adapter, victim))

    def _acquire(self, name: str | None) -> None:
        if name is not None:
            self._residency.begin(name)

    def _release(self, name: str | None) -> None:
        if name is None or not self._residency.end(name):
            return
        idle = self._idle_waiters.pop(name, None)
        if idle is not None:
            idle.set()
        self._unload(self._residency.shed())  # a load made while all were busy overshot

    # --- generation ----------------------------------------------------------------------------

    def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
        """Stream deltas.  Closing the iterator (client gone) cancels the generation.

        The prompt is tokenized (on the encoder thread) and checked before anything is queued,
        so an invalid request raises from the first ``anext``, before a response starts.  A
        prompt that cannot fit even at the longest token's length per token is refused here,
        without being encoded at all.
        """
        self._require_worker()
        chars = _prompt_chars(request)
        self._check_length(request, -(-chars // max(1, self._longest_token)), at_least=True)
        return self._stream(request)

    async def _stream(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
        loop = asyncio.get_running_loop()
        if _prompt_chars(request) <= INLINE_ENCODE_CHARS:
            prompt_ids = self._prompt_ids(request, self._tokenizer)
        else:
            prompt_ids = await loop.run_in_executor(
                self._encoder, self._prompt_ids, request, self._thread_tokenizer
            )
        self._check_length(request, len(prompt_ids))
        choices = int(request.extra.get("n", 1))
        constraint = constraint_for(request.extra)
        matchers: list[RowGrammar | None] = [None] * choices
        if constraint is not None:
            # Compiling a grammar can take a while (and llguidance's tokenizer is built on the
            # first): off the event loop, like long prompts.
            matchers = await loop.run_in_executor(
                self._encoder, self._matchers, constraint, choices
            )
        name = request.adapter.engine_name if request.adapter is not None else None
        queue: asyncio.Queue[GenerationChunk | BaseException] = asyncio.Queue()
        rows: list[Row] = []
        self._acquire(name)
        try:
            if request.adapter is not None:
                await self.load_adapter(request.adapter)
            totals = Totals(len(prompt_ids))  # usage counts the prompt once, as vLLM does
            rows = [
                self._make_row(request, prompt_ids, queue, index, totals, matchers[index])
                for index in range(choices)
            ]
            for row in rows:
                if constraint is not None and constraint.tools is not None:
                    row.tools = ToolCallReader(constraint)
                self._submit(row)
            finished = 0
            while finished < choices:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    finished += 1
        finally:
            for row in rows:
                row.cancelled = True  # a no-op once finished; stops the row if the client left
            self._release(name)

    def _matchers(self, constraint: Constraint, choices: int) -> list[RowGrammar | None]:
        """One matcher per choice (each row keeps its own parser state); on the encoder thread."""
        assert self._grammars is not None
        return [RowGrammar(self._grammars.matcher(constraint)) for _ in range(choices)]

    def _make_row(
        self,
        request: GenerationRequest,
        prompt_ids: list[int],
        queue: asyncio.Queue[GenerationChunk | BaseException],
        index: int = 0,
        totals: Totals | None = None,
        grammar: RowGrammar | None = None,
    ) -> Row:
        worker = self._require_worker()
        sampling = request.sampling
        # With n > 1 and a seed, choice i samples from seed + i: reproducible, not identical.
        seed = None if sampling.seed is None else (sampling.seed + index) % 2**64
        return Row(
            request_id=request.request_id,
            adapter=request.adapter.engine_name if request.adapter is not None else None,
            prompt_ids=prompt_ids,
            sampling=sampling,
            text=StreamText(worker.tokenizer, prompt_ids, sampling.stop),
            emit=self._emitter(queue),
            generator=self._generator(seed, sampling.greedy, worker.device),
            index=index,
            totals=totals,
            grammar=grammar,
            top_logprobs=_top_logprobs(request),
            logits=row_logits(
                sampling,
                prompt_length=len(prompt_ids),
                eos_ids=worker.eos_ids,
                vocab_size=worker.model.config.vocab_size,
                device=worker.device,
            ),
        )

    @staticmethod
    def _generator(seed: int | None, greedy: bool, device: torch.device) -> torch.Generator | None:
        if greedy:
            return None
        generator = torch.Generator(device=device)
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(seed)
        return generator

    def _emitter(self, queue: asyncio.Queue[GenerationChunk | BaseException]) -> Emit:
        loop = self._loop
        assert loop is not None

        def emit(item: GenerationChunk | BaseException) -> None:
            # A closed event loop raises RuntimeError; nobody is listening any more then.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(queue.put_nowait, item)

        return emit

    def _submit(self, row: Row) -> None:
        # Rows submitted in one loop iteration are handed over together, so they share a wave.
        self._outbox.append(row)
        if len(self._outbox) == 1:
            assert self._loop is not None
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        rows, self._outbox = self._outbox, []
        if not rows:
            return
        if self._worker is None:
            for row in rows:
                row.emit(EngineError("the engine is stopped"))
            return
        self._worker.submit(rows)

    # --- prompts -------------------------------------------------------------------------------

    def _prompt_ids(self, request: GenerationRequest, tokenizer: Any) -> list[int]:
        if request.messages is not None:
            try:
                # Tools go to the template, which shows them to the model if it knows how.
                text = tokenizer.apply_chat_template(
                    request.messages,
                    tools=request.extra.get("tools"),
                    tokenize=False,
                    add_generation_prompt=True,
                )
            except (TemplateError, ValueError) as exc:  # ValueError: no chat template
                raise InvalidRequest(
                    f"the messages do not fit the chat template: {exc}", param="messages"
                ) from exc
            ids = list(tokenizer.encode(text, add_special_tokens=False))
        elif request.prompt is not None:
            ids = list(tokenizer.encode(request.prompt))
            bos = tokenizer.bos_token_id
            if bos is not None and ids[:1] != [bos]:
                ids.insert(0, bos)
        else:
            raise InvalidRequest("the request has neither messages nor a prompt", param="messages")
        if not ids:
            raise InvalidRequest("the prompt is empty", param=_prompt_param(request))
        return ids

    def _check_length(
        self, request: GenerationRequest, prompt_tokens: int, *, at_least: bool = False
    ) -> None:
        max_tokens = request.sampling.max_tokens
        if max_tokens < 1:
            raise InvalidRequest("max_tokens must be at least 1", param="max_tokens")
        if prompt_tokens + max_tokens > self.max_model_len:
            size = f"at least {prompt_tokens}" if at_least else str(prompt_tokens)
            raise InvalidRequest(
                f"The prompt is {size} tokens and max_tokens is {max_tokens}; together "
                f"they exceed this model's maximum context length of {self.max_model_len} "
                "tokens.  Shorten the prompt or lower max_tokens.",
                param=_prompt_param(request),
                code="context_length_exceeded",
            )

    def _require_worker(self) -> EngineWorker:
        if self._worker is None:
            raise EngineUnavailable("the embedded engine is not running")
        return self._worker


# Prompts up to this many characters are encoded on the event loop (~0.1 ms); longer ones on
# the encoder thread.
INLINE_ENCODE_CHARS = 8_192


def _prompt_chars(request: GenerationRequest) -> int:
    if request.messages is not None:
        return sum(len(str(m.get("content") or "")) for m in request.messages)
    return len(request.prompt or "")


def _top_logprobs(request: GenerationRequest) -> int | None:
    """None when no logprobs are asked; else how many alternatives each token carries (chat:
    ``top_logprobs``; completions: ``logprobs`` is that count, 0 already asking)."""
    asked = request.extra.get("logprobs")
    if asked is None or asked is False:
        return None
    if request.messages is not None:
        return int(request.extra.get("top_logprobs") or 0)
    return int(asked)


def _prompt_param(request: GenerationRequest) -> str:
    return "messages" if request.messages is not None else "prompt"
