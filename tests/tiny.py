"""Tiny random Hugging Face models + a real fast tokenizer, built in seconds, no downloads.

    path = make_tiny_model_dir(tmp_path / "llama", family="llama")
    model, tok = load(path)

The tokenizer is a byte-level BPE trained on a few lines of text (so any string
round-trips), saved with a ChatML chat template so the same folder can also be
served by ``transformers serve``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_TRAIN_TEXT = [
    "Please give answer to this question: who wrote hamlet?\nThe answer is William Shakespeare.",
    "Answer these questions:\n\nQ: What is the capital of France?\nA: Paris",
    "The quick brown fox jumps over the lazy dog. 0123456789 A B C D",
    "Summarize the given story in less than 150 words while preserving high coherence.",
]

FAMILIES = ("llama", "qwen2", "gemma2", "mistral", "qwen3", "gemma3_text")
#: Further dense families (other layouts: fused qkv, LayerNorm + bias, GPT-2 ``Conv1D``) and MoE families.
DENSE_FAMILIES = ("llama", "qwen2", "gemma3_text", "phi3", "opt", "gpt_neox", "falcon", "gpt2")
MOE_FAMILIES = ("mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v3")

# Per-family config arguments on top of the common llama-style ones (4 experts, 2 per token, expert width 32).
_FAMILY_KWARGS = {
    "mixtral": dict(num_local_experts=4, num_experts_per_tok=2),
    "qwen2_moe": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                      shared_expert_intermediate_size=64, decoder_sparse_step=1),
    "qwen3_moe": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, head_dim=16, decoder_sparse_step=1),
    # MLA has one key per query head: as in every real DeepSeek-V3 config, num_key_value_heads equals
    # num_attention_heads (transformers 4.x's MLA attention repeats the keys heads/kv_heads times whenever
    # an attention mask is passed, so a smaller value breaks the model's own use_cache=False forward there).
    "deepseek_v3": dict(num_key_value_heads=4, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                        n_shared_experts=1,
                        first_k_dense_replace=1, n_group=1, topk_group=1, q_lora_rank=32, kv_lora_rank=16,
                        qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16),
}


def make_tokenizer(vocab_size: int = 384):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_TRAIN_TEXT * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHATML
    return fast


def make_config(family: str = "llama", vocab_size: int = 384, hidden: int = 64, layers: int = 2,
                intermediate: int = 128, max_positions: int = 512, **overrides):
    """``overrides``: further config arguments (e.g. ``num_key_value_heads``), applied last."""
    from transformers import AutoConfig

    common = dict(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    if family.startswith("gemma"):
        common.update(head_dim=16)
    if family == "qwen3":
        common.update(head_dim=16)
    if family == "gpt2":  # GPT-2 names: Conv1D blocks, inner width 4 * n_embd
        common = dict(vocab_size=vocab_size, n_embd=hidden, n_layer=layers, n_head=4, n_positions=max_positions,
                      bos_token_id=0, eos_token_id=0, pad_token_id=0, tie_word_embeddings=False)
    if family == "opt":
        common.update(ffn_dim=intermediate, word_embed_proj_dim=hidden)
    common.update(_FAMILY_KWARGS.get(family, {}))
    common.update(overrides)
    return AutoConfig.for_model(family, **common)


def make_tiny_model(family: str = "llama", seed: int = 0, **config_kwargs):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = make_config(family, **config_kwargs)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.eval()
    return model


def make_tiny_model_dir(path, family: str = "llama", seed: int = 0, **config_kwargs) -> Path:
    """Save a tiny random model + tokenizer (safetensors) into ``path``; return it."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer(config_kwargs.get("vocab_size", 384))
    model = make_tiny_model(family, seed=seed, vocab_size=len(tok), **{k: v for k, v in config_kwargs.items() if k != "vocab_size"})
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    # transformers serve / chat templates read it from tokenizer_config.json
    cfg_path = path / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.setdefault("chat_template", CHATML)
    cfg_path.write_text(json.dumps(cfg, indent=2))
    return path


def load(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), AutoTokenizer.from_pretrained(path)
