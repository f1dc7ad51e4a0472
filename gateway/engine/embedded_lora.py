"""Send each row of a batch through its own LoRA adapter (PEFT mixed-adapter batches), cheaply.

PEFT's public route is ``peft_model(..., adapter_names=[...])``.  On every call it walks every
module of the model twice, to check the names and to hook each LoRA layer, and the module
count grows with each resident adapter: with 64 demo adapters resident, that walk was 85% of a
decode step (13.5 ms instead of 1.9 ms per step).  :class:`AdapterRouter` registers the same
hook once per layer and sets the names per forward pass; each layer then runs PEFT's own
mixed-batch forward (``LoraLayer._mixed_batch_forward``), exactly as through the public route.
PEFT's checks still run: each layer refuses DoRA adapters and mismatched lengths.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from peft import PeftModel
from peft.tuners.lora import LoraLayer
from peft.utils.other import AuxiliaryTrainingWrapper
from torch.utils.hooks import RemovableHandle

BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in a mixed-adapter batch


class AdapterRouter:
    """Injects ``adapter_names`` into every PEFT layer while :meth:`route` is active."""

    def __init__(self) -> None:
        self._handles: list[RemovableHandle] = []
        self._names: list[str] | None = None

    def attach(self, model: PeftModel) -> None:
        """Hook the model's current PEFT layers; call again after adapters are added or removed."""
        self.detach()
        for module in model.modules():
            # The same layers PEFT's own adapter_names hook targets (peft/tuners/lora/model.py).
            if isinstance(module, LoraLayer | AuxiliaryTrainingWrapper):
                handle = module.register_forward_pre_hook(self._inject, with_kwargs=True)
                self._handles.append(handle)

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    @contextmanager
    def route(self, adapter_names: list[str]) -> Iterator[None]:
        """Within this block, row ``i`` of a forward pass uses adapter ``adapter_names[i]``."""
        self._names = adapter_names
        try:
            yield
        finally:
            self._names = None

    def _inject(
        self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        if self._names is None:
            return None
        kwargs["adapter_names"] = self._names
        return args, kwargs
