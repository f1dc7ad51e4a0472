"""Build the demo base model and demo adapters locally, because nothing can be downloaded.

The demo base is a tiny Llama-architecture model with random weights (fixed seed) and a
byte-level BPE tokenizer trained here with the ``tokenizers`` library on a small built-in
corpus, plus a chat template.  Its text is not meaningful; the mechanics (tokenizing, chat
templates, LoRA, batching, streaming, training) are the real ones.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from gateway.engine.base import DEMO_MARKER, is_demo_base

# Enough text to give the BPE merges something to learn; the content is irrelevant.
_CORPUS = """\
The quick brown fox jumps over the lazy dog. A customer asked how to reset a password.
Please open settings, choose security, and press reset. Thanks for your order!
Your invoice is attached. We ship within two business days. Refunds take five days.
Hello! How can I help you today? I would like to change my plan to the annual one.
Sure, I can help with that. Is there anything else? No, that is all, thank you.
{"status": "ok", "items": [1, 2, 3], "total": 42.5} yes no maybe always never
0 1 2 3 4 5 6 7 8 9 10 20 30 40 50 60 70 80 90 100 monday tuesday friday
"""

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

SPECIAL_TOKENS = [
    "<|pad|>",
    "<|bos|>",
    "<|eos|>",
    "<|end|>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
]


def build_tokenizer(dest: Path, vocab_size: int = 512) -> Any:
    """Train a byte-level BPE tokenizer on the built-in corpus and save it as a fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok,
        bos_token="<|bos|>",
        eos_token="<|end|>",
        pad_token="<|pad|>",
        unk_token=None,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    fast.save_pretrained(dest)
    return fast


def build_demo_base(dest: Path, *, seed: int = 0, hidden_size: int = 64, layers: int = 2) -> Path:
    """Create the demo base under ``dest`` once; later calls return it unchanged."""
    if is_demo_base(dest):
        return dest
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    dest.parent.mkdir(parents=True, exist_ok=True)
    # Build in a temporary sibling and rename, so a crash never leaves half a model behind.
    tmp = Path(tempfile.mkdtemp(prefix=".demo-base-", dir=dest.parent))
    try:
        tokenizer = build_tokenizer(tmp)
        torch.manual_seed(seed)
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            intermediate_size=hidden_size * 2,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=2048,
            # A wide init spreads the logits, so greedy decoding has few near-ties and batched
            # and one-at-a-time runs agree token for token.
            initializer_range=0.2,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=False,
        )
        model = LlamaForCausalLM(config)
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(tmp)
        (tmp / DEMO_MARKER).write_text(json.dumps({"seed": seed, "note": "random demo weights"}))
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def build_demo_adapter(
    base_path: Path,
    dest: Path,
    *,
    seed: int,
    rank: int = 8,
    use_dora: bool = False,
    scale: float = 0.5,
) -> Path:
    """Save a PEFT LoRA adapter for ``base_path`` with random (seeded) non-zero B matrices.

    A freshly initialised LoRA is a no-op (B = 0); the random B makes each demo tenant's
    greedy output differ from the base and from the other tenants'.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    config = LoraConfig(
        r=rank,
        lora_alpha=rank * 2,
        target_modules="all-linear",
        lora_dropout=0.0,
        use_dora=use_dora,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(base, config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, scale)
    model.save_pretrained(str(dest))
    # Record a portable base reference rather than this machine's absolute path.
    cfg_path = dest / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = str(base_path)
    cfg_path.write_text(json.dumps(cfg, indent=2))
    return dest
