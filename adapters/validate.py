"""Check a PEFT LoRA directory against the serving base before it is registered.

Checks: the files exist, it is a LoRA config, the rank is within the configured maximum, every
target module exists in the base, and every LoRA tensor's shape fits the module it targets.
The shape check is the authoritative one: ``base_model_name_or_path`` is a free-form string
that differs between machines for the same base, so a mismatch there is only reported.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapters.artifacts import REQUIRED_FILES
from gateway.core.errors import AdapterInvalid


@dataclass(frozen=True)
class AdapterInfo:
    rank: int
    alpha: float
    use_dora: bool
    target_modules: list[str]
    base_model: str
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class BaseSpec:
    """Linear modules of the base: suffix name -> the (in_features, out_features) it has (a
    suffix may have several, e.g. ``q_proj`` in a vision tower and in the language model)."""

    name: str
    linear: dict[str, set[tuple[int, int]]]
    layers: int = 0  # decoder layers; 0: unknown (layer indices are then not checked)


def base_spec(base_path: Path, name: str) -> BaseSpec:
    """The base's linear modules read from its own safetensors headers (any architecture, no
    weights loaded); a base without safetensors falls back to the Llama-family config."""
    files = _weight_files(base_path)
    if not files:
        return base_spec_from_config(base_path, name)
    linear: dict[str, set[tuple[int, int]]] = {}
    for file in files:
        for key, shape in _safetensors_shapes(file).items():
            if key.endswith(".weight") and len(shape) == 2:
                module = key[: -len(".weight")].rsplit(".", 1)[-1]
                out_features, in_features = shape  # nn.Linear stores (out, in)
                linear.setdefault(module, set()).add((in_features, out_features))
    return BaseSpec(name=name, linear=linear, layers=_layers(base_path))


def _weight_files(base_path: Path) -> list[Path]:
    index = base_path / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [base_path / shard for shard in shards]
    return sorted(base_path.glob("*.safetensors"))


def _layers(base_path: Path) -> int:
    try:
        cfg = json.loads((base_path / "config.json").read_text())
    except (OSError, ValueError):
        return 0
    cfg = cfg.get("text_config") or cfg  # multimodal configs nest the language model's
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(cfg.get(key), int):
            return int(cfg[key])
    return 0


def base_spec_from_config(base_path: Path, name: str) -> BaseSpec:
    """Shapes of a Llama-family base's linear layers from its config.json, for a base whose
    weights are not in safetensors."""
    cfg = json.loads((base_path / "config.json").read_text())
    hidden = int(cfg["hidden_size"])
    inter = int(cfg["intermediate_size"])
    heads = int(cfg["num_attention_heads"])
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    head_dim = int(cfg.get("head_dim") or hidden // heads)
    linear = {
        "q_proj": {(hidden, heads * head_dim)},
        "k_proj": {(hidden, kv_heads * head_dim)},
        "v_proj": {(hidden, kv_heads * head_dim)},
        "o_proj": {(heads * head_dim, hidden)},
        "gate_proj": {(hidden, inter)},
        "up_proj": {(hidden, inter)},
        "down_proj": {(inter, hidden)},
    }
    return BaseSpec(name=name, linear=linear, layers=int(cfg.get("num_hidden_layers") or 0))


def _safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Read tensor shapes from the safetensors header without loading any weights."""
    with path.open("rb") as fp:
        (size,) = struct.unpack("<Q", fp.read(8))
        if size > 100 * 1024 * 1024:
            raise AdapterInvalid(f"{path.name}: safetensors header is implausibly large")
        header: dict[str, Any] = json.loads(fp.read(size))
    return {k: v["shape"] for k, v in header.items() if k != "__metadata__"}


def inspect_adapter(path: Path, base: BaseSpec, *, max_rank: int) -> AdapterInfo:
    if not path.is_dir():
        raise AdapterInvalid(f"{path} is not a directory")
    missing = [n for n in REQUIRED_FILES if not (path / n).is_file()]
    if missing:
        raise AdapterInvalid(
            f"{path} is not a PEFT LoRA directory: missing {', '.join(missing)} "
            "(save it with PeftModel.save_pretrained, safetensors format)"
        )
    try:
        cfg = json.loads((path / "adapter_config.json").read_text())
    except json.JSONDecodeError as exc:
        raise AdapterInvalid(f"adapter_config.json is not valid JSON: {exc}") from exc
    if cfg.get("peft_type") != "LORA":
        raise AdapterInvalid(f"only LoRA adapters are served; this one is {cfg.get('peft_type')!r}")
    rank = int(cfg.get("r", 0))
    if not 0 < rank <= max_rank:
        raise AdapterInvalid(
            f"LoRA rank {rank} is outside 1..{max_rank} (FLYWHEEL_MAX_LORA_RANK)", param="r"
        )
    try:
        shapes = _safetensors_shapes(path / "adapter_model.safetensors")
    except (OSError, ValueError, struct.error) as exc:
        raise AdapterInvalid(f"adapter_model.safetensors is unreadable: {exc}") from exc
    targets = _check_tensors(shapes, base, rank)
    warnings = []
    declared = str(cfg.get("base_model_name_or_path") or "")
    if declared and Path(declared).name != Path(base.name).name and declared != base.name:
        warnings.append(f"adapter declares base {declared!r}; serving base is {base.name!r}")
    return AdapterInfo(
        rank=rank,
        alpha=float(cfg.get("lora_alpha", rank)),
        use_dora=bool(cfg.get("use_dora", False)),
        target_modules=sorted(targets),
        base_model=declared,
        warnings=warnings,
    )


def _check_tensors(shapes: dict[str, list[int]], base: BaseSpec, rank: int) -> set[str]:
    targets: set[str] = set()
    for key, shape in shapes.items():
        if ".lora_A." not in key and ".lora_B." not in key:
            continue  # e.g. DoRA magnitude vectors, checked by PEFT at load
        module = key.split(".lora_")[0].rsplit(".", 1)[-1]
        if module not in base.linear:
            raise AdapterInvalid(
                f"target module {module!r} does not exist in base {base.name!r} "
                f"(linear modules: {', '.join(sorted(base.linear))})"
            )
        layer = re.search(r"\.layers\.(\d+)\.", key)
        if base.layers and layer and int(layer.group(1)) >= base.layers:
            raise AdapterInvalid(
                f"tensor {key} targets layer {layer.group(1)}, but base {base.name!r} has "
                f"{base.layers} layers: the adapter was trained on a different base"
            )
        expected = [
            [rank, fan_in] if ".lora_A." in key else [fan_out, rank]
            for fan_in, fan_out in sorted(base.linear[module])
        ]
        if list(shape) not in expected:
            wanted = " or ".join(map(str, expected))
            raise AdapterInvalid(
                f"tensor {key} has shape {shape}, expected {wanted} for base {base.name!r}: "
                "the adapter was trained on a different base"
            )
        targets.add(module)
    if not targets:
        raise AdapterInvalid("adapter_model.safetensors holds no LoRA tensors")
    return targets
