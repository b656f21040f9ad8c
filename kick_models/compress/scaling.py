"""Where per-input-channel scales can be folded in a decoder block, and the folding itself.

Shared by AWQ (:mod:`.awq`) and SmoothQuant (:mod:`.smoothquant`). A :class:`Mapping` says: multiply the
input columns of ``linears`` by ``s`` and divide the operation producing their input (``prev``) by ``s``;
the block computes the same function (exactly in real arithmetic, up to float rounding in practice).

Mappings are read from the block's structure (the LLaMA layout that LLaMA, Mistral, Qwen 2/3 and Gemma 2/3
share, as mit-han-lab/llm-awq and mit-han-lab/smoothquant map ``LlamaDecoderLayer``):

==========================  ====================  ==================  =======================================
prev                         linears               AWQ inspects         condition
==========================  ====================  ==================  =======================================
input norm                   q, k, v               self_attn (kwargs)  always
v_proj                       o_proj                o_proj              v and o weights of the same shape (no GQA)
norm before the MLP          gate, up              mlp                 dense MLP (gate_proj, up_proj, down_proj)
up_proj                      down_proj             down_proj           dense MLP
==========================  ====================  ==================  =======================================

SmoothQuant uses only the two norm mappings (as its reference does). Anything else is reported in
``skipped`` with the reason (o_proj under grouped-query attention, MoE experts, blocks of other layouts):
those matrices are still quantized, only not scaled.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Mapping:
    prev: str                  # module name in the block: a norm or a Linear
    linears: tuple[str, ...]   # Linears whose inputs are prev's output
    inspect: str               # module whose output AWQ compares ("" = the first linear alone)
    kind: str                  # "norm" | "linear"
    attention: bool = False    # the inspected module takes the decoder layer's keyword arguments


@dataclass(frozen=True)
class BlockMappings:
    mappings: tuple[Mapping, ...]
    skipped: tuple[tuple[str, str], ...]  # (matrix names, why no scale is folded for them)

    def norm_mappings(self) -> tuple[Mapping, ...]:
        return tuple(m for m in self.mappings if m.kind == "norm")


def _linear(module: nn.Module | None, name: str) -> nn.Linear | None:
    child = getattr(module, name, None) if module is not None else None
    return child if isinstance(child, nn.Linear) else None


def _is_norm(module: nn.Module | None) -> bool:
    return module is not None and "norm" in type(module).__name__.lower() and isinstance(
        getattr(module, "weight", None), torch.Tensor)


def block_mappings(block: nn.Module) -> BlockMappings:
    """The block's foldable mappings and what is skipped; a block of another layout gets no mapping at all."""
    attn, mlp = getattr(block, "self_attn", None), getattr(block, "mlp", None)
    q, k, v, o = (_linear(attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj"))
    input_norm = getattr(block, "input_layernorm", None)
    mlp_norm_name = "pre_feedforward_layernorm" if hasattr(block, "pre_feedforward_layernorm") else "post_attention_layernorm"
    mlp_norm = getattr(block, mlp_norm_name, None)
    mappings: list[Mapping] = []
    skipped: list[tuple[str, str]] = []
    if None in (q, k, v, o) or not _is_norm(input_norm):
        why = ("not the LLaMA layout (input_layernorm -> self_attn.q/k/v/o_proj, a norm -> mlp.gate/up/down_proj): "
               "no scale is folded")
        return BlockMappings((), ((type(block).__name__, why),))
    mappings.append(Mapping("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                            "self_attn", "norm", attention=True))
    if v.weight.shape == o.weight.shape:
        mappings.append(Mapping("self_attn.v_proj", ("self_attn.o_proj",), "", "linear"))
    else:
        why = (f"v_proj {tuple(v.weight.shape)} and o_proj {tuple(o.weight.shape)} differ (grouped-query "
               "attention): as the reference, no v -> o scale")
        skipped.append(("self_attn.o_proj", why))
    gate, up, down = (_linear(mlp, n) for n in ("gate_proj", "up_proj", "down_proj"))
    if None in (gate, up, down) or not _is_norm(mlp_norm):
        why = (f"{type(mlp).__name__} is not a dense gate/up/down MLP after a norm (MoE experts or another "
               "layout): its matrices are quantized without a scale")
        skipped.append(("mlp", why))
    else:
        mappings.append(Mapping(mlp_norm_name, ("mlp.gate_proj", "mlp.up_proj"), "mlp", "norm"))
        mappings.append(Mapping("mlp.up_proj", ("mlp.down_proj",), "", "linear"))
    return BlockMappings(tuple(mappings), tuple(skipped))


def _norm_has_unit_offset(norm: nn.Module) -> bool:
    """Gemma's RMSNorm multiplies by ``1 + weight`` instead of ``weight``."""
    return type(norm).__name__.startswith("Gemma")


@torch.no_grad()
def fold_into_norm(norm: nn.Module, linears: list[nn.Linear], scales: torch.Tensor) -> None:
    """``norm`` output / s, ``linears``' input columns * s (llm-awq ``scale_ln_fcs``, smoothquant ``smooth_ln_fcs``)."""
    scales = scales.to(norm.weight.device).to(norm.weight.dtype)
    if _norm_has_unit_offset(norm):
        norm.weight.copy_((1 + norm.weight) / scales - 1)
    else:
        norm.weight.div_(scales)
    if getattr(norm, "bias", None) is not None:
        norm.bias.div_(scales)
    for fc in linears:
        fc.weight.mul_(scales.view(1, -1))


@torch.no_grad()
def fold_into_linear(fc1: nn.Linear, fc2: nn.Linear, scales: torch.Tensor) -> None:
    """``fc1``'s last ``len(s)`` output rows / s, ``fc2``'s input columns * s (llm-awq ``scale_fc_fc``)."""
    scales = scales.to(fc1.weight.device).to(fc1.weight.dtype)
    fc1.weight[-scales.size(0):].div_(scales.view(-1, 1))
    if fc1.bias is not None:
        fc1.bias.div_(scales.view(-1))
    fc2.weight.mul_(scales.view(1, -1))


def fold(block: nn.Module, mapping: Mapping, scales: torch.Tensor) -> None:
    prev = block.get_submodule(mapping.prev)
    linears = [block.get_submodule(n) for n in mapping.linears]
    if mapping.kind == "norm":
        fold_into_norm(prev, linears, scales)
    else:
        fold_into_linear(prev, linears[0], scales)
    for module in [prev, *linears]:
        for p in module.parameters():
            if torch.isnan(p).any():
                raise FloatingPointError(f"folding scales into {mapping.prev} -> {', '.join(mapping.linears)} "
                                         "produced NaN")


def _output(out):
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def run_dense_block(block: nn.Module, inps, calls, mappings: BlockMappings, names, on_input) -> list[torch.Tensor]:
    """Run every calibration batch through the still dense ``block``; return its outputs (the next block's inputs).

    ``on_input(name, x)`` receives the input of every Linear in ``names``, per batch, in execution order. In the first batch the
    input of each norm mapping's Linears must be the very tensor the norm returned; anything else means the block
    does something between the norm and the Linear, so folding would change its function: an error.
    """
    norm_out: dict[str, torch.Tensor] = {}
    handles = [block.get_submodule(n).register_forward_hook(
        lambda mod, args, out, n=n: on_input(n, args[0])) for n in sorted(names)]
    first = [True]
    for m in mappings.norm_mappings():
        handles.append(block.get_submodule(m.prev).register_forward_hook(
            lambda mod, args, out, p=m.prev: norm_out.__setitem__(p, out) if first[0] else None))
        for n in m.linears:
            def check(mod, args, p=m.prev, n=n):
                if first[0] and args[0] is not norm_out.get(p):
                    raise RuntimeError(f"{type(block).__name__}.{n} does not receive the output of {p} unchanged: "
                                       "its scale cannot be folded into the norm")
            handles.append(block.get_submodule(n).register_forward_pre_hook(check))
    outs = []
    try:
        for x, (rest, kwargs) in zip(inps, calls):
            outs.append(_output(block(x, *rest, **kwargs)))
            first[0] = False
            norm_out.clear()
    finally:
        for h in handles:
            h.remove()
    return outs
