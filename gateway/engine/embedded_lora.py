"""Send each row of a batch through its own LoRA adapter, cheaply.

PEFT's public route is ``peft_model(..., adapter_names=[...])``.  On every call it walks every
module of the model twice, to check the names and to hook each LoRA layer, and the module
count grows with each resident adapter: with 64 demo adapters resident, that walk was 85% of a
decode step (13.5 ms instead of 1.9 ms per step).  :class:`AdapterRouter` takes over the LoRA
layers once (again after every load or delete) and sets the names per forward pass.

Two ways through a LoRA layer:

- **Batched** (plain LoRA ``Linear`` layers, the usual case): each layer keeps every resident
  adapter's A and B stacked (zero-padded to the largest rank, the scaling folded into B, one
  all-zero slot for base rows), and its forward is replaced by the
  base layer plus ``x @ A[slot] @ B[slot]`` for all rows in two batched matmuls: the same two
  products whatever the number of adapters in the batch, where PEFT's mixed-batch forward
  runs a pair of small matmuls per adapter (vLLM's punica/BGMV kernels do the former on
  GPUs).  The rows' A and B are gathered once per batch composition and reused by every step
  until a row leaves (gathering them per step and per layer was a fifth of a SmolLM2 decode
  step).  Each row's arithmetic does not depend on the other rows of the batch.
- **PEFT's own mixed-batch forward** (``LoraLayer._mixed_batch_forward``) for anything else:
  LoRA on embeddings or convolutions, ``modules_to_save``, LoRA biases, or variants.  PEFT's
  checks still run there: each layer refuses DoRA adapters and mismatched lengths.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from peft import PeftModel
from peft.tuners.lora import Linear as LoraLinear
from peft.tuners.lora import LoraLayer
from peft.utils.other import AuxiliaryTrainingWrapper
from torch.utils.hooks import RemovableHandle

BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in a mixed-adapter batch


@dataclass(frozen=True)
class _Stack:
    """One layer's adapters side by side: A^T ``[slots, in, r]``, (B·scaling)^T ``[slots, r, out]``."""

    a: torch.Tensor
    b: torch.Tensor


class AdapterRouter:
    """Routes row ``i`` of a forward pass through adapter ``names[i]`` while :meth:`route` runs."""

    def __init__(self) -> None:
        self._handles: list[RemovableHandle] = []
        self._overridden: list[Any] = []  # LoRA layers whose forward is ours
        self._names: list[str] | None = None
        self._slots: dict[str, int] = {}  # adapter -> its slot in every stack
        self._stacks: dict[int, _Stack] = {}  # id(layer) -> stack; empty: PEFT's path only
        self._batched_now = False  # this forward pass takes the batched path
        # Each row's A and B for every layer, gathered for one batch composition (the key).
        self._rows_key: tuple[int, ...] | None = None
        self._rows: dict[int, _Stack] = {}
        self.gathers = 0  # how many times rows' weights were gathered (a counter for tests)
        # The last LoRA layer input and its copy in the adapters' dtype.
        self._x_in: torch.Tensor | None = None
        self._x_flat = torch.empty(0)

    @property
    def batched(self) -> bool:
        """True when the resident adapters take the batched path."""
        return bool(self._stacks)

    def attach(self, model: PeftModel) -> None:
        """Take over the model's current PEFT layers; again after adapters are added or removed."""
        self.detach()
        layers: list[Any] = [
            m for m in model.modules() if isinstance(m, LoraLayer | AuxiliaryTrainingWrapper)
        ]
        if not all(type(m) is LoraLinear for m in layers):
            # Embeddings, convolutions, modules_to_save: PEFT's path for every row, told the
            # names by the same hook PEFT's own adapter_names uses (peft/tuners/lora/model.py).
            for module in layers:
                handle = module.register_forward_pre_hook(self._inject, with_kwargs=True)
                self._handles.append(handle)
            return
        names = [
            n
            for n in model.peft_config
            if not any(n in m.lora_variant or m.lora_bias.get(n, False) for m in layers)
        ]
        self._slots = {name: i for i, name in enumerate(names)}
        for module in layers:
            self._stacks[id(module)] = _stack(module, names)
            # An instance attribute shadows the class's forward (nn.Module calls self.forward);
            # detach() deletes it.  Cheaper than a pre-hook and a forward hook per layer.
            module.forward = _Forward(self, module, _direct(module.base_layer))
            self._overridden.append(module)

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for module in self._overridden:
            module.__dict__.pop("forward", None)
        self._overridden.clear()
        self._stacks.clear()
        self._slots.clear()
        self.release()

    def release(self) -> None:
        """Drop the rows' gathered weights (kept between steps of one batch)."""
        self._rows_key = None
        self._rows = {}

    @contextmanager
    def route(self, adapter_names: list[str]) -> Iterator[None]:
        """Within this block, row ``i`` of a forward pass uses adapter ``adapter_names[i]``."""
        base_slot = len(self._slots)
        slots = tuple(
            base_slot if n == BASE_ADAPTER else self._slots.get(n, -1) for n in adapter_names
        )
        self._names = adapter_names
        self._batched_now = bool(self._stacks) and -1 not in slots
        if self._batched_now and slots != self._rows_key:
            self._gather(slots, base_slot)
        try:
            yield
        finally:
            self._names, self._batched_now = None, False
            self._x_in, self._x_flat = None, torch.empty(0)

    def _gather(self, slots: tuple[int, ...], base_slot: int) -> None:
        self.release()
        if all(slot == base_slot for slot in slots):
            self._rows_key = slots  # base rows only: no deltas to add
            return
        device = next(iter(self._stacks.values())).a.device
        index = torch.tensor(slots, device=device)
        self._rows = {key: _Stack(s.a[index], s.b[index]) for key, s in self._stacks.items()}
        self._rows_key = slots
        self.gathers += 1

    def forward(
        self,
        module: Any,
        base: Callable[..., torch.Tensor],
        x: torch.Tensor,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        """A LoRA layer's forward pass while this router owns it (``base``: its base layer)."""
        if not self._batched_now:
            if self._names is not None:
                kwargs["adapter_names"] = self._names
            out: torch.Tensor = type(module).forward(module, x, *args, **kwargs)
            return out
        result = base(x, *args, **kwargs)
        rows = self._rows.get(id(module))
        if rows is None:
            return result  # every row is a base row
        # Each op costs microseconds of dispatch, and a SmolLM2 step runs 210 of these layers,
        # so the fewest ops: q/k/v (and gate/up) get the same input tensor, converted once
        # (transformers' models never change it in place between those projections).
        if x is self._x_in:
            flat = self._x_flat
        else:
            flat = x.to(rows.a.dtype)
            if flat.dim() != 3:
                flat = flat.reshape(x.shape[0], -1, x.shape[-1])  # [rows, tokens, in]
            self._x_in, self._x_flat = x, flat
        delta = torch.bmm(torch.bmm(flat, rows.a), rows.b)  # [rows, tokens, out]
        if delta.shape != result.shape:
            delta = delta.reshape(result.shape)
        # Rounded to the output's dtype before the add, as PEFT does (an add in float32
        # rounded once differs from PEFT by an ulp per layer, which adds up).
        delta = delta.to(result.dtype)
        return result + delta if torch.is_grad_enabled() else result.add_(delta)

    def _inject(
        self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        if self._names is None:
            return None
        kwargs["adapter_names"] = self._names
        return args, kwargs


class _Forward:
    """``module.forward`` while an :class:`AdapterRouter` owns the layer."""

    __slots__ = ("_base", "_module", "_router")

    def __init__(self, router: AdapterRouter, module: Any, base: Callable[..., torch.Tensor]):
        self._router = router
        self._module = module
        self._base = base

    def __call__(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self._router.forward(self._module, self._base, x, *args, **kwargs)


def _direct(layer: Any) -> Callable[..., torch.Tensor]:
    """``layer``'s forward without nn.Module's call machinery, unless a hook needs it."""
    hooked = (
        layer._forward_hooks
        or layer._forward_pre_hooks
        or torch.nn.modules.module._global_forward_hooks
        or torch.nn.modules.module._global_forward_pre_hooks
    )
    return layer if hooked else layer.forward  # type: ignore[no-any-return]


def _stack(module: Any, names: list[str]) -> _Stack:
    """``module``'s adapters (zeros where one has none here), then the all-zero base slot.

    In the adapters' dtype: PEFT keeps them in float32 beside a bfloat16 base, and on CPU
    float32 batched matmuls of these shapes are faster than bfloat16 ones (measured: 13-22 us
    against 59-93 us per layer for 8 rows of SmolLM2).
    """
    base = module.get_base_layer()
    present = [n for n in names if n in module.lora_A]
    rank = max((module.r[n] for n in present), default=1)
    like = module.lora_A[present[0]].weight if present else base.weight
    dtype, device = like.dtype, like.device
    slots = len(names) + 1
    a = torch.zeros(slots, base.in_features, rank, dtype=dtype, device=device)
    b = torch.zeros(slots, rank, base.out_features, dtype=dtype, device=device)
    with torch.no_grad():
        for i, name in enumerate(names):
            if name in module.lora_A:
                r = module.r[name]
                a[i, :, :r] = module.lora_A[name].weight.t()
                b[i, :r] = (module.lora_B[name].weight * module.scaling[name]).t()
    return _Stack(a, b)
