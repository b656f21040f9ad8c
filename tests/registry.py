"""Every causal-LM family of the installed transformers, built tiny from its own default config shrunk.

    model = shrunk_model("qwen3_moe")       # 2 blocks (one per distinct layer type, at least 2), hidden 64,
                                            # 4 heads, 4 experts (2 per token), expert width 48
    families()                              # sorted MODEL_FOR_CAUSAL_LM_MAPPING_NAMES keys

Shrinking sets, on the config and every sub-config, only the attributes the config really has (through its
``attribute_map`` too: ``n_embd``, ``d_model`` ...), so a family is built exactly as its authors wrote it, just
small. A family that cannot be built this way raises; the registry test lists it with the reason.
"""

from __future__ import annotations

import contextlib
import warnings

import torch

HIDDEN = 64
EXPERTS = 4
EXPERT_WIDTH = 48
VOCAB = 384

# attribute -> tiny value, set where the config has the attribute (first the generic names, then families' own)
_SHRINK = {
    "hidden_size": HIDDEN, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
    "head_dim": 16, "vocab_size": VOCAB, "max_position_embeddings": 256, "n_positions": 256,
    "ffn_dim": 128, "n_inner": 128, "d_ff": 128, "dff": 128, "inner_size": 128, "ffn_hidden_size": 128, "decoder_ffn_dim": 128,
    "encoder_ffn_dim": 128, "multi_query_group_num": 2, "kv_channels": 16,
    # experts
    "num_experts": EXPERTS, "num_local_experts": EXPERTS, "n_routed_experts": EXPERTS, "moe_num_experts": EXPERTS,
    "num_experts_per_tok": 2, "moe_topk": 2, "moe_k": 2, "top_k": 2, "num_experts_per_token": 2,
    "moe_intermediate_size": EXPERT_WIDTH, "expert_intermediate_size": EXPERT_WIDTH,
    "shared_expert_intermediate_size": 64, "moe_shared_expert_intermediate_size": 64, "n_shared_experts": 1,
    "num_shared_experts": 1, "n_group": 1, "topk_group": 1, "first_k_dense_replace": 1, "decoder_sparse_step": 1,
    "moe_layer_freq": 1, "mlp_only_layers": [],
    # multi-head latent attention
    "q_lora_rank": 32, "kv_lora_rank": 16, "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "v_head_dim": 16,
    "index_head_dim": 16, "index_n_heads": 2, "index_topk": 8,
    # state-space / linear attention
    "state_size": 8, "ssm_state_size": 8, "mamba_d_state": 8, "mamba_n_heads": 8, "mamba_d_head": 16,
    "mamba_head_dim": 16, "mamba_n_groups": 1, "n_groups": 1, "time_step_rank": 8, "mamba_dt_rank": 8,
    "linear_num_key_heads": 2, "linear_num_value_heads": 4, "linear_key_head_dim": 16, "linear_value_head_dim": 16,
    "attn_layer_period": 2, "attn_layer_offset": 1, "expert_layer_period": 2, "expert_layer_offset": 1,
    "sliding_window": 64,
}
# families whose default shapes tie attributes together beyond the generic names
_FAMILY = {
    "dbrx": {"d_model": HIDDEN, "n_heads": 4, "ffn_config": {"ffn_hidden_size": EXPERT_WIDTH, "moe_num_experts": EXPERTS,
                                                            "moe_top_k": 2},
             "attn_config": {"kv_n_heads": 2}},
    "mamba2": {"num_heads": 8, "head_dim": 16, "n_groups": 1},
    "bamba": {"mamba_n_heads": 8, "mamba_d_head": 16},
}
# transformers' own modeling code reads attributes its default config lacks (a transformers bug, not a shrink)
# (DBRX: ``rope_theta`` is read but not defined; ``clip_qkv=None`` reaches ``torch.clamp``: 8 as in dbrx-instruct)
_MISSING_DEFAULTS = {"dbrx": {"attn_config": {"rope_theta": 10000.0, "clip_qkv": 8.0}}}
#: a family whose tiny build still holds more parameters than this is "not buildable tiny" (checked on meta)
MAX_PARAMS = 8_000_000
#: ... or a Linear wider than this (GPTQ's Hessian grows with the square of the input width)
MAX_WIDTH = 1024


def families() -> list[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def _has(config, name: str) -> bool:
    return name in config.attribute_map or name in vars(config)


def _shrink_layer_types(config, n_layers: int) -> int:
    """Per-layer type lists (``layer_types``, ``mlp_layer_types``, ``indexer_types`` ...: lists of strings as long as
    the model is deep) keep one layer of each distinct type, in first-occurrence order; return the new depth."""
    depth = next((getattr(config, k, None) for k in ("num_hidden_layers", "n_layer", "num_layers")
                  if isinstance(getattr(config, k, None), int)), None)
    lists = {k: v for k, v in vars(config).items() if isinstance(v, list) and v and len(v) == depth
             and all(isinstance(x, str) for x in v)}
    if not lists:
        return n_layers
    n = max(n_layers, *(len(dict.fromkeys(v)) for v in lists.values()))
    for name, types in lists.items():
        kept = list(dict.fromkeys(types))
        while len(kept) < n:
            kept.append(types[len(kept) % len(types)])
        with contextlib.suppress(AttributeError):  # derived from other attributes (a read-only property)
            setattr(config, name, kept)
    return n


def shrink(config, n_layers: int = 2):
    """Shrink ``config`` (and its sub-configs) in place; return it."""
    from transformers import PretrainedConfig

    for name, value in vars(config).copy().items():
        if isinstance(value, PretrainedConfig):
            shrink(value, n_layers)
    default = {k: getattr(config, k, None) for k in ("num_key_value_heads", "num_attention_heads", "head_dim",
                                                     "qk_rope_head_dim", "qk_nope_head_dim", "qk_head_dim")}
    for name, value in _SHRINK.items():
        if _has(config, name) and getattr(config, name, None) is not None:
            with contextlib.suppress(AttributeError):  # read-only properties
                setattr(config, name, value)
    # sizes the default ties together stay tied: multi-head (kv heads == heads), MLA's rope head == head_dim
    tied = [("num_key_value_heads", "num_attention_heads"), ("head_dim", "qk_rope_head_dim")]
    for a, b in tied:
        if default[a] is not None and default[a] == default[b]:
            with contextlib.suppress(AttributeError):
                setattr(config, a, getattr(config, b))
    if default["qk_head_dim"] is not None and default["qk_head_dim"] == (default["qk_nope_head_dim"] or 0) + (
            default["qk_rope_head_dim"] or 0):
        with contextlib.suppress(AttributeError):
            config.qk_head_dim = config.qk_nope_head_dim + config.qk_rope_head_dim
    family = getattr(config, "model_type", "")
    for name, value in [*_FAMILY.get(family, {}).items(), *_MISSING_DEFAULTS.get(family, {}).items()]:
        current = getattr(config, name, None)
        if isinstance(value, dict) and current is not None:
            for k, v in value.items():
                if isinstance(current, dict):
                    current[k] = v
                else:
                    setattr(current, k, v)
        else:
            setattr(config, name, value)
    layers = _shrink_layer_types(config, n_layers)
    for name in ("num_hidden_layers", "n_layer", "num_layers", "decoder_layers", "n_layers"):
        if _has(config, name) and isinstance(getattr(config, name, None), int):
            setattr(config, name, layers)
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id"):
        if isinstance(getattr(config, name, None), int) and getattr(config, name) >= VOCAB:
            setattr(config, name, 0)
    if hasattr(config, "tie_word_embeddings"):
        config.tie_word_embeddings = False
    return config


def shrunk_config(family: str, n_layers: int = 2):
    from transformers import AutoConfig

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return shrink(AutoConfig.for_model(family), n_layers)


def shrunk_model(family: str, seed: int = 0):
    """The family's causal LM built from its shrunk default config (float32, eval mode, random weights)."""
    from transformers import AutoModelForCausalLM

    config = shrunk_config(family)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.device("meta"):
            meta = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        n = sum(p.numel() for p in meta.parameters())
        if n > MAX_PARAMS:
            raise ValueError(f"still {n / 1e6:.1f}M parameters after shrinking (more than {MAX_PARAMS / 1e6:g}M)")
        wide = [f"{name} (in_features {m.in_features})" for name, m in meta.named_modules()
                if isinstance(m, torch.nn.Linear) and m.in_features > MAX_WIDTH and not name.endswith("lm_head")]
        if wide:
            raise ValueError(f"a size the shrink does not know stays large: {', '.join(wide[:2])}")
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.eval()
    return model
