"""CPU speed for the embedded engine: bfloat16 where the CPU has it, and prepacked weights.

Measured on SmolLM2-135M, 8 rows decoding together on one core of a shared AMD EPYC (Zen 5,
AVX512-BF16); see docs/benchmarks.md, "Real engines":

- **bfloat16** halves the bytes every decode step reads and runs the matmuls on the CPU's
  bfloat16 instructions: a step took 100 ms of CPU in float32 and 57 ms in bfloat16, with the
  same perplexity on English text (57.4 and 57.3) and 97 % of next-token argmaxes equal.
  Without such instructions bfloat16 is emulated and slower, so ``auto`` keeps float32 there.
- **Prepacked linear weights**: oneDNN reorders a weight into its blocked layout on every
  call unless it is given one already reordered; reordering once at load made a decode step
  15-20 % faster (47 -> 39 ms), with bit-identical outputs.  Costs a second copy of the
  linear weights (the originals stay, because PEFT reads them when it loads adapters).

Tried and left out, because they measured no better here: a KV cache growing in place instead
of transformers' per-step concatenation (same step time at 40 and 600 prompt tokens), and
attention by two matmuls instead of SDPA for single-token steps (within the noise).
"""

from __future__ import annotations

import logging
import sys
from functools import cache
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@cache
def native_bf16_cpu() -> bool:
    """True when this CPU has bfloat16 instructions (x86 AVX512-BF16 or AMX), read from Linux's
    /proc/cpuinfo; False where that cannot be told (other systems: float32 stays the default)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            return bool(BF16_CPU_FLAGS & set(line.split(":", 1)[-1].split()))
    return False


# --- prepacked linear layers ---------------------------------------------------------------


class PackedLinear:
    """``module.forward`` for an ``nn.Linear`` whose weight oneDNN has reordered once."""

    __slots__ = ("bias", "weight")

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.weight = weight
        self.bias = bias

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(
            x, self.weight, self.bias, "none", [], ""
        )
        return out


def prepack_linears(model: nn.Module, *, batch_hint: int = 8) -> int:
    """Give every bfloat16 ``nn.Linear`` of ``model`` on the CPU a prepacked forward.

    Returns how many layers were packed: 0 when oneDNN is missing, or when a probe through the
    packed path does not match ``F.linear`` exactly (then nothing is changed).  The override is
    an instance attribute (``module.forward``); :func:`unpack_linears` removes it.
    """
    if not torch.backends.mkldnn.is_available():  # type: ignore[no-untyped-call]
        return 0
    layers = [
        m
        for m in model.modules()
        if type(m) is nn.Linear
        and m.weight.dtype == torch.bfloat16
        and m.weight.device.type == "cpu"
    ]
    if not layers:
        return 0
    try:
        with torch.no_grad():
            packed = [
                PackedLinear(
                    torch.ops.mkldnn._reorder_linear_weight(m.weight.detach(), batch_hint),
                    None if m.bias is None else m.bias.detach(),
                )
                for m in layers
            ]
            probe = torch.randn(2, 3, layers[0].in_features, dtype=torch.bfloat16)
            same = torch.equal(
                packed[0](probe), nn.functional.linear(probe, layers[0].weight, layers[0].bias)
            )
    except (RuntimeError, AttributeError) as exc:  # an op this torch build lacks
        log.info("not prepacking linear weights: %s", exc)
        return 0
    if not same:
        log.info("not prepacking linear weights: the packed path gives different numbers")
        return 0
    for module, forward in zip(layers, packed, strict=True):
        vars(module)["forward"] = forward  # shadows the class's forward; nn.Module calls it
    return len(layers)


def unpack_linears(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module.__dict__.get("forward"), PackedLinear):
            del module.forward
