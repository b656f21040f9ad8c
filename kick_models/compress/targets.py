"""What a decoder block holds and what gets compressed: targets, routers, uncovered weights, and their measurement.

A *target* is one weight matrix in the ``nn.Linear`` orientation ``[out, in]`` that a compressor
rewrites in place, plus the module whose forward input is that matrix's input (the hook point):

* ``nn.Linear`` (routers excluded): the Linear itself;
* ``transformers.pytorch_utils.Conv1D`` (GPT-2 family, weight stored ``[in, out]``): a transposed view;
* fused MoE experts: the per-expert :class:`~kick_models.compress.moe.ExpertLinear` views.

Every >= 2-D parameter of a block is then either compressed (a target covers it), a router (kept
dense on purpose) or uncovered (refused unless ``allow_partial``). :func:`measure_block` counts the
zeros of ALL of them from their values: the report's sparsity and bits per weight are over that.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kick_models.compress import moe


@dataclass
class Target:
    """One matrix to compress: ``weight`` ([out, in], possibly a view), fed by ``module``'s input."""

    module: nn.Module
    weight: torch.Tensor
    param: str  # name, relative to the block, of the parameter holding ``weight``
    expert: int | None = None

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]


def _conv1d_type() -> type | None:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover
        return None
    return Conv1D


def block_targets(layer: nn.Module, linears: dict[str, nn.Linear], expert_views: dict[str, nn.Module]) -> dict[str, Target]:
    """``{name in the block: Target}``: the block's Linears (minus routers), Conv1Ds and fused-expert views."""
    routers = moe.router_params(layer)
    targets: dict[str, Target] = {}
    for name, lin in linears.items():
        if f"{name}.weight" in routers:
            continue
        targets[name] = Target(lin, lin.weight, f"{name}.weight", moe.expert_index(name))
    conv1d = _conv1d_type()
    if conv1d is not None:
        for name, m in layer.named_modules():
            if isinstance(m, conv1d):
                targets[name] = Target(m, m.weight.data.t(), f"{name}.weight")
    for name, view in expert_views.items():
        targets[name] = Target(view, view.weight, view.param, moe.expert_index(name))
    return targets


def covered_params(layer: nn.Module, linears: dict[str, nn.Linear]) -> set[str]:
    """Names (in the block) of the parameters the targets will cover, from the structure alone (no values read)."""
    routers = moe.router_params(layer)
    names = {f"{n}.weight" for n in linears if f"{n}.weight" not in routers}
    conv1d = _conv1d_type()
    if conv1d is not None:
        names |= {f"{n}.weight" for n, m in layer.named_modules() if isinstance(m, conv1d)}
    for name, experts in moe.fused_experts_modules(layer).items():
        names |= {f"{name}.{p}" for p in moe.fused_expert_param_names(experts)}
    return names


def block_roles(layer: nn.Module, linears: dict[str, nn.Linear]) -> dict[str, str]:
    """``{parameter name: "compressed" | "router" | "bias" | "uncovered"}`` for every >= 2-D parameter of the
    block (``bias``: fused experts' per-expert biases, not weight matrices: kept and listed, never refused)."""
    covered = covered_params(layer, linears)
    routers = moe.router_params(layer)
    biases = moe.expert_bias_params(layer)
    roles = {}
    for name, p in layer.named_parameters():
        if p.dim() < 2:
            continue
        roles[name] = ("compressed" if name in covered else "router" if name in routers
                       else "bias" if name in biases else "uncovered")
    return roles


def _dtype_bits(t: torch.Tensor) -> int:
    return torch.finfo(t.dtype).bits if t.dtype.is_floating_point else torch.iinfo(t.dtype).bits


@torch.no_grad()
def measure_block(layer: nn.Module, roles: dict[str, str], prefix: str, block: int) -> list[dict]:
    """One record per >= 2-D parameter of the block (values read: the layer must be on a real device):
    ``{"name", "block", "role", "numel", "zeros", "dtype_bits"}``."""
    params = dict(layer.named_parameters())
    out = []
    for name, role in roles.items():
        p = params[name]
        out.append({"name": f"{prefix}.{name}", "block": block, "role": role, "numel": p.numel(),
                    "zeros": int((p.data == 0).sum().item()), "dtype_bits": _dtype_bits(p)})
    return out
