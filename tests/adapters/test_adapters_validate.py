"""Registration checks of a PEFT directory against the serving base (no torch load needed)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from adapters.validate import base_spec, base_spec_from_config, inspect_adapter
from gateway.core.errors import AdapterInvalid


@pytest.fixture
def adapter(tmp_path: Path, demo_adapters: list[Path]) -> Path:
    return Path(shutil.copytree(demo_adapters[0], tmp_path / "adapter"))


def _rewrite(adapter: Path, change: object) -> None:
    tensors = load_file(adapter / "adapter_model.safetensors")
    assert callable(change)
    save_file(change(tensors), adapter / "adapter_model.safetensors")


def test_the_base_read_from_its_weights_matches_the_config_reading(demo_base: Path) -> None:
    from_weights, from_config = base_spec(demo_base, "demo"), base_spec_from_config(demo_base, "d")
    assert from_weights.layers == from_config.layers == 2
    for module, shapes in from_config.linear.items():
        assert from_weights.linear[module] == shapes


def test_a_non_llama_base_with_fused_projections(tmp_path: Path) -> None:
    # Phi-3 fuses q/k/v into qkv_proj and gate/up into gate_up_proj: the config-based reading
    # knows only Llama's names, the weights-based one reads whatever the base has.
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Phi3Config, Phi3ForCausalLM

    torch.manual_seed(0)
    config = Phi3Config(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    base = tmp_path / "phi3"
    Phi3ForCausalLM(config).save_pretrained(base)
    lora = LoraConfig(r=4, target_modules=["qkv_proj", "o_proj", "gate_up_proj", "down_proj"])
    peft_model = get_peft_model(Phi3ForCausalLM(config), lora)
    adapter = tmp_path / "phi3-lora"
    peft_model.save_pretrained(adapter)

    info = inspect_adapter(adapter, base_spec(base, "phi3"), max_rank=64)
    assert set(info.target_modules) == {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}
    with pytest.raises(AdapterInvalid, match="_proj' does not exist in base 'phi3'"):
        inspect_adapter(adapter, base_spec_from_config(base, "phi3"), max_rank=64)


def test_a_demo_adapter_passes(demo_base: Path, adapter: Path) -> None:
    info = inspect_adapter(adapter, base_spec(demo_base, "demo"), max_rank=64)
    assert info.rank == 8 and not info.use_dora
    assert set(info.target_modules) <= {"q_proj", "k_proj", "v_proj", "o_proj"} | {
        "gate_proj",
        "up_proj",
        "down_proj",
    }


def test_rank_above_the_limit(demo_base: Path, adapter: Path) -> None:
    with pytest.raises(AdapterInvalid, match=r"rank 8 is outside 1\.\.4"):
        inspect_adapter(adapter, base_spec_from_config(demo_base, "demo"), max_rank=4)


def test_missing_files_and_other_peft_types(demo_base: Path, adapter: Path) -> None:
    spec = base_spec_from_config(demo_base, "demo")
    config = adapter / "adapter_config.json"
    cfg = json.loads(config.read_text())
    config.write_text(json.dumps({**cfg, "peft_type": "IA3"}))
    with pytest.raises(AdapterInvalid, match="only LoRA"):
        inspect_adapter(adapter, spec, max_rank=64)
    config.unlink()
    with pytest.raises(AdapterInvalid, match=r"missing adapter_config\.json"):
        inspect_adapter(adapter, spec, max_rank=64)


def test_wrong_shapes_unknown_modules_and_layers_are_another_base(
    demo_base: Path, adapter: Path, tmp_path: Path
) -> None:
    spec = base_spec(demo_base, "demo")
    original = load_file(adapter / "adapter_model.safetensors")
    key = next(k for k in original if ".lora_A." in k)

    _rewrite(adapter, lambda t: {**t, key: t[key][:, :32].contiguous()})  # a narrower base
    with pytest.raises(AdapterInvalid, match="trained on a different base"):
        inspect_adapter(adapter, spec, max_rank=64)

    renamed = key.replace(key.split(".lora_A.")[0].rsplit(".", 1)[-1], "wkv")
    _rewrite(
        adapter,
        lambda t: {**{k: v for k, v in original.items() if k != key}, renamed: original[key]},
    )
    with pytest.raises(AdapterInvalid, match="'wkv' does not exist"):
        inspect_adapter(adapter, spec, max_rank=64)

    deep = key.replace(".layers.0.", ".layers.99.").replace(".layers.1.", ".layers.99.")
    assert deep != key
    _rewrite(
        adapter, lambda t: {**{k: v for k, v in original.items() if k != key}, deep: original[key]}
    )
    with pytest.raises(AdapterInvalid, match="layer 99"):
        inspect_adapter(adapter, spec, max_rank=64)
