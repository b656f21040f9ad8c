"""Mixture-of-experts blocks seen by the compressors: one weight matrix per expert, routers kept dense.

Two layouts exist, both recognised from transformers' own structure (no family class names):

* **fused experts** (transformers 5.x): a module holding 3-D parameters ``gate_up_proj [E, 2I, H]``
  (or ``up_proj`` when ``has_gate`` is false) and ``down_proj [E, H, I]``, with ``num_experts`` and
  the layout flags that ``transformers.integrations.moe.use_experts_implementation`` sets
  (``is_transposed``, ``is_concatenated``, ``has_bias``, ``has_gate``, ``has_post_expert_norm``).
  :func:`unfused_experts` temporarily replaces its ``forward`` by an exactly-routed loop over
  per-expert :class:`ExpertLinear` modules whose ``weight`` is a VIEW of the fused tensor (gate,
  up and down slices of expert ``e``), so the driver hooks, compresses and frees them like any
  ``nn.Linear`` and the compressed values land in the fused parameters in place.
* **expert lists** (transformers 4.x): an ``experts`` ``nn.ModuleList`` of MLPs made of ``nn.Linear``;
  the driver already sees those Linears, routed exactly as the model routes them.

Routers (direct children of an MoE block named ``gate``, ``router`` or ``*_gate``) stay dense.

Calibration policy (``moe_calibration``):

* ``all`` (default, as llm-compressor): every expert's statistics see every calibration token,
  while the block's output stays the routed one;
* ``routed``: an expert's statistics see only the tokens routed to it (an expert that received
  none is compressed from identity statistics, i.e. by weight magnitude, never zeroed).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

MOE_POLICIES = ("all", "routed")

_paused = [0]


def statistics_paused() -> bool:
    """True while an expert runs its routed (output-only) pass under ``moe_calibration=all``."""
    return _paused[0] > 0


@contextlib.contextmanager
def _pause_statistics() -> Iterator[None]:
    _paused[0] += 1
    try:
        yield
    finally:
        _paused[0] -= 1


# --------------------------------------------------------------------------- structure


def is_moe_block(module: nn.Module) -> bool:
    """A module with an ``experts`` child (fused experts or an ``nn.ModuleList`` of expert MLPs)."""
    experts = getattr(module, "experts", None)
    return isinstance(experts, nn.Module) and (isinstance(experts, nn.ModuleList) or is_fused_experts(experts))


def is_router_name(child: str) -> bool:
    return child in ("gate", "router") or child.endswith("_gate") or child.endswith("_router")


def is_fused_experts(module: nn.Module) -> bool:
    """Experts stored as 3-D parameters ``[num_experts, ., .]`` (``gate_up_proj``/``up_proj`` + ``down_proj``)."""
    n = getattr(module, "num_experts", None)
    up = getattr(module, "gate_up_proj", None)
    if up is None:
        up = getattr(module, "up_proj", None)
    down = getattr(module, "down_proj", None)
    return (isinstance(n, int) and isinstance(up, nn.Parameter) and isinstance(down, nn.Parameter)
            and up.dim() == 3 and down.dim() == 3 and up.shape[0] == n and down.shape[0] == n)


def router_params(layer: nn.Module) -> dict[str, str]:
    """``{parameter name in the block: reason}`` for every router weight (>= 2-D) of the block's MoE blocks."""
    out: dict[str, str] = {}
    for name, module in layer.named_modules():
        if not is_moe_block(module):
            continue
        for child_name, child in module.named_children():
            if not is_router_name(child_name):
                continue
            for pname, p in child.named_parameters():
                if p.dim() >= 2:
                    full = ".".join(x for x in (name, child_name, pname) if x)
                    out[full] = "router (kept dense, as in llm-compressor's ignore lists)"
    return out


def fused_experts_modules(layer: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in layer.named_modules() if is_fused_experts(m)}


def expert_index(name: str) -> int | None:
    """Expert number of a target named ``...experts.<e>.<...>`` (both layouts), else None."""
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part == "experts" and parts[i + 1].isdigit():
            return int(parts[i + 1])
    return None


# --------------------------------------------------------------------------- per-expert views


class ExpertLinear(nn.Module):
    """One expert's projection as a Linear whose ``weight`` ([out, in]) and ``bias`` are views of the fused tensors."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, param: str) -> None:
        super().__init__()
        self.weight = weight
        self.bias = bias
        self.param = param  # name of the fused parameter (relative to the block) holding this slice
        self.in_features = weight.shape[1]
        self.out_features = weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


def _slice(param: torch.Tensor, e: int, rows: slice, transposed: bool, interleaved_rows: slice | None = None) -> torch.Tensor:
    """Expert ``e``'s [out, in] view of a fused parameter (``[E, out, in]``, or ``[E, in, out]`` if transposed)."""
    w = param.data[e]
    w = w.t() if transposed else w
    return w[interleaved_rows] if interleaved_rows is not None else w[rows]


def expert_linears(experts: nn.Module, prefix: str) -> dict[str, ExpertLinear]:
    """``{"<prefix>.<e>.gate_proj" | ".up_proj" | ".down_proj": ExpertLinear}`` viewing the fused tensors."""
    transposed = bool(getattr(experts, "is_transposed", False))
    concatenated = bool(getattr(experts, "is_concatenated", True))
    has_gate = bool(getattr(experts, "has_gate", hasattr(experts, "gate_up_proj")))
    has_bias = bool(getattr(experts, "has_bias", False))
    out: dict[str, ExpertLinear] = {}
    up_name = "gate_up_proj" if has_gate else "up_proj"
    up = getattr(experts, up_name)
    down = experts.down_proj
    up_bias = getattr(experts, up_name + "_bias", None) if has_bias else None
    down_bias = getattr(experts, "down_proj_bias", None) if has_bias else None
    rows_total = up.shape[2] if transposed else up.shape[1]
    half = rows_total // 2
    for e in range(experts.num_experts):
        if has_gate:
            if concatenated:
                parts = {"gate_proj": (slice(0, half), None), "up_proj": (slice(half, rows_total), None)}
            else:  # interleaved [g0, u0, g1, u1, ...]
                parts = {"gate_proj": (None, slice(0, None, 2)), "up_proj": (None, slice(1, None, 2))}
            for part, (rows, inter) in parts.items():
                w = _slice(up, e, rows, transposed, inter)
                b = None if up_bias is None else (up_bias.data[e][inter] if inter is not None else up_bias.data[e][rows])
                out[f"{prefix}.{e}.{part}"] = ExpertLinear(w, b, f"{prefix}.{up_name}")
        else:
            w = _slice(up, e, slice(None), transposed)
            out[f"{prefix}.{e}.up_proj"] = ExpertLinear(w, None if up_bias is None else up_bias.data[e], f"{prefix}.{up_name}")
        w = _slice(down, e, slice(None), transposed)
        out[f"{prefix}.{e}.down_proj"] = ExpertLinear(w, None if down_bias is None else down_bias.data[e], f"{prefix}.down_proj")
    return out


def expert_views(layer: nn.Module) -> dict[str, ExpertLinear]:
    """Every fused-experts module's per-expert views, by name in the block (structure only, forward untouched)."""
    views: dict[str, ExpertLinear] = {}
    for name, experts in fused_experts_modules(layer).items():
        views.update(expert_linears(experts, name))
    return views


def _unfused_forward(experts: nn.Module, linears: dict[str, ExpertLinear], prefix: str, policy: str):
    concatenated = bool(getattr(experts, "is_concatenated", True))
    has_gate = bool(getattr(experts, "has_gate", hasattr(experts, "gate_up_proj")))

    def mlp(e: int, x: torch.Tensor) -> torch.Tensor:
        if has_gate:
            g, u = linears[f"{prefix}.{e}.gate_proj"](x), linears[f"{prefix}.{e}.up_proj"](x)
            gate_up = torch.cat([g, u], dim=-1) if concatenated else torch.stack([g, u], dim=-1).flatten(-2)
            h = experts._apply_gate(gate_up) if hasattr(experts, "_apply_gate") else experts.act_fn(g) * u
        else:
            h = experts.act_fn(linears[f"{prefix}.{e}.up_proj"](x))
        h = linears[f"{prefix}.{e}.down_proj"](h)
        if getattr(experts, "has_post_expert_norm", False):
            h = experts.post_expert_norm(h)
        return h

    def forward(hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor, *args: Any,
                **kwargs: Any) -> torch.Tensor:
        final = torch.zeros_like(hidden_states)
        for e in range(experts.num_experts):
            token_idx, top_k_pos = torch.where(top_k_index == e)
            if policy == "all":
                out = mlp(e, hidden_states)[token_idx]  # statistics from every token, output from the routed ones
            elif token_idx.numel():
                out = mlp(e, hidden_states[token_idx])
            else:
                continue
            out = out * top_k_weights[token_idx, top_k_pos, None]
            final.index_add_(0, token_idx, out.to(final.dtype))
        return final

    return forward


@contextlib.contextmanager
def calibration_view(layer: nn.Module, policy: str = "all") -> Iterator[dict[str, ExpertLinear]]:
    """Inside: fused experts route through per-expert :class:`ExpertLinear` views (yielded, by name in the
    block), and under ``policy="all"`` every expert of an ``nn.ModuleList`` also sees every token for its
    statistics (its routed call then runs with statistics paused). Restores every ``forward`` on exit."""
    if policy not in MOE_POLICIES:
        raise ValueError(f"moe_calibration must be one of {', '.join(MOE_POLICIES)}, got {policy!r}")
    views: dict[str, ExpertLinear] = {}
    restore: list[tuple[nn.Module, Any]] = []
    handles: list[Any] = []
    try:
        for name, experts in fused_experts_modules(layer).items():
            linears = expert_linears(experts, name)
            views.update(linears)
            restore.append((experts, experts.__dict__.get("forward")))
            experts.forward = _unfused_forward(experts, linears, name, policy)
        if policy == "all":
            for name, block in layer.named_modules():
                if is_moe_block(block) and isinstance(block.experts, nn.ModuleList):
                    handles += _see_all_tokens(block, restore)
        yield views
    finally:
        for h in handles:
            h.remove()
        for module, original in reversed(restore):
            if original is None:
                module.__dict__.pop("forward", None)
            else:
                module.forward = original


def _see_all_tokens(block: nn.Module, restore: list) -> list:
    """``moe_calibration=all`` for an ``nn.ModuleList`` of experts: each expert first runs on all the block's
    tokens (statistics), then its routed call (the block's output) runs with statistics paused; an expert the
    router did not pick runs on all tokens after the block."""
    state: dict[str, Any] = {"tokens": None, "done": set()}

    def pre(module: nn.Module, args: tuple, kwargs: dict) -> None:
        x = args[0] if args else kwargs["hidden_states"]
        state["tokens"], state["done"] = x.reshape(-1, x.shape[-1]), set()

    def wrap(i: int, expert: nn.Module, original: Any):
        def forward(x: torch.Tensor, *a: Any, **k: Any) -> torch.Tensor:
            if i not in state["done"] and state["tokens"] is not None:
                state["done"].add(i)
                original(state["tokens"])
            with _pause_statistics():
                return original(x, *a, **k)

        return forward

    originals = []
    for i, expert in enumerate(block.experts):
        restore.append((expert, expert.__dict__.get("forward")))
        original = expert.forward
        originals.append(original)
        expert.forward = wrap(i, expert, original)

    def post(module: nn.Module, args: tuple, output: Any) -> None:
        for i, original in enumerate(originals):
            if i not in state["done"]:
                original(state["tokens"])
        state["tokens"] = None

    return [block.register_forward_pre_hook(pre, with_kwargs=True), block.register_forward_hook(post)]
