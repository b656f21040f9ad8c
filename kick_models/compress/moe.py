"""Mixture-of-experts blocks seen by the compressors: one weight matrix per expert, routers kept dense.

Two layouts exist, both recognised from the modules themselves (no family class names):

* **fused experts**: a module with ``num_experts`` holding one tensor per projection for all experts,
  3-D ``[E, ., .]`` (``gate_up_proj`` / ``up_proj`` / ``gate_proj`` + ``down_proj``, transformers 5.x) or
  2-D stacked ``[E * width, hidden]`` (DBRX's ``w1`` / ``v1`` / ``w2``). :func:`expert_layout` reads the
  layout from the module: each expert matrix's orientation ([in, out] or [out, in]) from its shape against
  the hidden size (projections into the expert read it, ``down`` writes it), the forward signature
  (``(hidden, top_k_index, top_k_weights)`` or, as Llama 4, ``(hidden [E * T, H])``), and gate/up
  concatenation vs interleaving; the module's own forward on a probe input must then equal kick's
  per-expert reading, else the module is refused by name. An expert width equal to the hidden size with
  no layout flag is refused before calibration. Biases (``gate_up_proj_bias [E, 2I]``) are not weight
  matrices: they stay as they are and are listed as kept. :func:`calibration_view` temporarily replaces
  the module's ``forward`` by an exactly-routed loop over per-expert :class:`ExpertLinear` modules whose
  ``weight`` is a VIEW of the fused tensor, so the driver hooks, compresses and frees them like any
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
import inspect
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kick_models.compress.compare import outputs_close
from kick_models.compress.config import UnsupportedModelError

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
    """A module with an ``experts`` child module (fused/stacked experts, an ``nn.ModuleList`` of expert MLPs, or
    experts kick has no handler for: their router is still a router, never compressed as a plain Linear)."""
    return isinstance(getattr(module, "experts", None), nn.Module)


def is_router_name(child: str) -> bool:
    return child in ("gate", "router") or child.endswith("_gate") or child.endswith("_router")


# a fused parameter's part of the expert MLP, from its name: projections into the expert read the hidden size
_INTO = {"gate_up_proj": "gate_up", "up_proj": "up", "gate_proj": "gate", "w1": "gate", "v1": "up"}
_OUT_OF = ("down_proj", "w2")


def _expert_params(module: nn.Module) -> dict[str, nn.Parameter]:
    """``{name: parameter}`` of the expert matrices a module holds (directly or in a child without experts of its
    own, as DBRX's ``experts.mlp``): names of :data:`_INTO` / :data:`_OUT_OF`."""
    out = {}
    for n, p in module.named_parameters():
        path, _, leaf = n.rpartition(".")
        if leaf not in (*_INTO, *_OUT_OF):
            continue
        # not inside a child that is an experts module of its own (an MoE block holding fused experts)
        if path and any(isinstance(getattr(module.get_submodule(".".join(path.split(".")[:i + 1])), "num_experts", None),
                                   int) for i in range(len(path.split(".")))):
            continue
        out[n] = p
    return out


def is_fused_experts(module: nn.Module) -> bool:
    """Experts stored as tensors of all experts: 3-D ``[num_experts, ., .]`` (``gate_up_proj``/``up_proj`` +
    ``down_proj``), or 2-D stacked ``[num_experts * width, hidden]`` (DBRX's ``w1``/``v1``/``w2``)."""
    n = getattr(module, "num_experts", None)
    params = _expert_params(module)
    if not isinstance(n, int) or n < 1 or isinstance(module, nn.ModuleList):
        return False
    leaves = {k.rsplit(".", 1)[-1] for k in params}
    if not leaves & set(_OUT_OF) or not leaves & set(_INTO):
        return False
    return all((p.dim() == 3 and p.shape[0] == n) or (p.dim() == 2 and p.shape[0] % n == 0 and p.shape[0] > n)
               for p in params.values())


def router_params(layer: nn.Module) -> dict[str, str]:
    """``{parameter name in the block: reason}`` for every router weight (>= 2-D) of the block's MoE blocks."""
    out: dict[str, str] = {}
    for name, module in layer.named_modules():
        moe_block = is_moe_block(module)
        for child_name, child in module.named_children():
            # ``gate`` is a router only in an MoE block; a child named ``router`` always is
            if not is_router_name(child_name) or not (moe_block or child_name.endswith("router")):
                continue
            for pname, p in child.named_parameters():
                if p.dim() >= 2:
                    full = ".".join(x for x in (name, child_name, pname) if x)
                    out[full] = "router (kept dense, as in llm-compressor's ignore lists)"
    return out


def fused_expert_param_names(experts: nn.Module) -> list[str]:
    """Names (in the experts module) of its expert weight tensors."""
    return list(_expert_params(experts))


def fused_experts_modules(layer: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in layer.named_modules() if is_fused_experts(m)}


def expert_bias_params(layer: nn.Module) -> set[str]:
    """Names (in the block) of the fused experts' bias tensors (``gate_up_proj_bias [E, 2I]`` ...): not weight
    matrices; they stay as they are and are listed as kept."""
    out = set()
    for name, experts in fused_experts_modules(layer).items():
        out |= {f"{name}.{n}" for n, p in experts.named_parameters() if n.endswith("bias") and p.dim() >= 2}
    return out


def expert_index(name: str) -> int | None:
    """Expert number of a target named ``...experts.<e>.<...>`` (both layouts), else None."""
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part == "experts" and parts[i + 1].isdigit():
            return int(parts[i + 1])
    return None


# --------------------------------------------------------------------------- layouts, read from the module


@dataclass
class ExpertLayout:
    """How a fused-experts module stores its experts, decided from its shapes against the hidden size and checked
    against its own forward on a probe input (:func:`expert_layout`)."""

    params: dict[str, tuple[str, bool]]  # part (gate_up | gate | up | down) -> (parameter name, stored [in, out])
    hidden: int
    interleaved: bool  # gate_up rows [g0, u0, g1, u1, ...] instead of [gate; up]
    call: str  # "routed": forward(hidden, top_k_index, top_k_weights); "batched": forward(hidden [E * T, H])
    call_names: tuple[str, ...]  # the module's forward parameter names (keyword calls)


_LAYOUTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _hidden_size(experts: nn.Module) -> int | None:
    for holder in (experts, getattr(experts, "config", None)):
        for attr in ("hidden_size", "hidden_dim", "d_model"):
            value = getattr(holder, attr, None)
            if isinstance(value, int):
                return value
    return None


def _stored_in_out(shape: tuple[int, int], hidden: int, into_expert: bool) -> bool | None:
    """Whether one expert's matrix of ``shape`` is stored [in, out] (True) or [out, in] (False); None if the
    shape cannot tell (both or neither axis of the hidden size)."""
    a, b = shape
    hidden_axis = [a == hidden, b == hidden]
    if hidden_axis[0] == hidden_axis[1]:
        return None
    # into the expert: the input axis is the hidden one; out of it (down): the output axis is
    return hidden_axis[0] if into_expert else hidden_axis[1]


def _per_expert_shape(p: torch.Tensor, n: int, hidden: int) -> tuple[int, int]:
    return tuple(p.shape[1:]) if p.dim() == 3 else (p.shape[0] // n, p.shape[1])


def _structure(experts: nn.Module, name: str) -> ExpertLayout:
    n = experts.num_experts
    hidden = _hidden_size(experts)
    params = _expert_params(experts)
    if hidden is None:
        raise UnsupportedModelError(f"fused experts {name} ({type(experts).__name__}): no hidden_size on the module "
                                    f"or its config, so the axes of {', '.join(params)} cannot be told apart.")
    parts: dict[str, tuple[str, bool | None]] = {}
    for pname, p in params.items():
        leaf = pname.rsplit(".", 1)[-1]
        part = "down" if leaf in _OUT_OF else _INTO[leaf]
        parts[part] = (pname, _stored_in_out(_per_expert_shape(p, n, hidden), hidden, part != "down"))
    known = {t for _, t in parts.values() if t is not None}
    flag = getattr(experts, "is_transposed", None)
    fill = flag if isinstance(flag, bool) else known.pop() if len(known) == 1 else None
    undecided = [pname for pname, t in parts.values() if t is None]
    if undecided and fill is None:
        shapes = ", ".join(f"{k} {tuple(p.shape)}" for k, p in params.items())
        raise UnsupportedModelError(
            f"fused experts {name} ({type(experts).__name__}): {shapes} with hidden size {hidden}: the expert width "
            f"equals the hidden size, so [E, in, out] cannot be told from [E, out, in] for {', '.join(undecided)} "
            f"(expected exactly one axis of each expert matrix to be the hidden size). Refused before calibration.")

    names = tuple(k for k, v in inspect.signature(type(experts).forward).parameters.items()
                  if k != "self" and v.kind in (v.POSITIONAL_OR_KEYWORD, v.POSITIONAL_ONLY))
    if len(names) == 1:
        call = "batched"
    elif len(names) >= 3:
        call = "routed"
    else:
        raise UnsupportedModelError(f"fused experts {name}: forward({', '.join(names)}) is neither "
                                    f"(hidden_states, top_k_index, top_k_weights) nor (hidden_states).")
    concatenated = getattr(experts, "is_concatenated", True)
    return ExpertLayout({part: (pname, fill if t is None else t) for part, (pname, t) in parts.items()}, hidden,
                        not concatenated, call, names)


def expert_layout(experts: nn.Module, name: str) -> ExpertLayout:
    """The module's layout: shapes against the hidden size decide the orientation; when its weights are real, its
    own forward on a probe input must equal kick's per-expert reading (gate/up interleaving is chosen by it),
    else :class:`~kick_models.compress.config.UnsupportedModelError` naming the module."""
    cached = _LAYOUTS.get(experts)
    if cached is not None:
        return cached
    layout = _structure(experts, name)
    weights = [p for p in experts.parameters()]
    if any(p.device.type == "meta" for p in weights):
        return layout  # structure only (offloaded / not materialised): probed when the block is on a device
    candidates = [layout]
    if "gate_up" in layout.params:
        candidates.append(ExpertLayout(layout.params, layout.hidden, not layout.interleaved, layout.call,
                                       layout.call_names))
    for candidate in candidates:
        if _probe(experts, name, candidate):
            _LAYOUTS[experts] = candidate
            return candidate
    raise UnsupportedModelError(
        f"fused experts {name} ({type(experts).__name__}): kick's per-expert reading of "
        f"{', '.join(f'{p} as [E, in, out]' if t else f'{p} as [E, out, in]' for p, t in layout.params.values())} "
        f"(gate/up concatenated or interleaved) does not reproduce the module's own forward on a probe input; "
        f"kick cannot prove this layout, so it is refused.")


@torch.no_grad()
def _probe(experts: nn.Module, name: str, layout: ExpertLayout) -> bool:
    weight = next(experts.parameters())
    n, hidden = experts.num_experts, layout.hidden
    g = torch.Generator().manual_seed(0)
    if layout.call == "batched":
        args: tuple = (torch.randn(n * 3, hidden, generator=g).to(weight),)
    else:
        tokens, k = 6, min(2, n)
        index = torch.stack([torch.randperm(n, generator=g)[:k] for _ in range(tokens)]).to(weight.device)
        args = (torch.randn(tokens, hidden, generator=g).to(weight), index, torch.rand(tokens, k, generator=g).to(weight))
    want = experts.forward(*args)
    got = _unfused_forward(experts, expert_linears(experts, "", layout), "", "routed", layout)(*args)
    want = want[0] if isinstance(want, tuple) else want
    if want.numel() != got.numel():
        return False
    return outputs_close(got.reshape(-1, hidden), want.reshape(-1, hidden))


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


def _expert_matrix(p: torch.Tensor, e: int, n: int, stored_in_out: bool) -> torch.Tensor:
    """Expert ``e``'s [out, in] view of a fused (3-D) or stacked (2-D ``[E * k, .]``) parameter."""
    w = p.data[e] if p.dim() == 3 else p.data.view(n, -1, p.shape[-1])[e]
    return w.t() if stored_in_out else w


def expert_linears(experts: nn.Module, prefix: str, layout: ExpertLayout | None = None) -> dict[str, ExpertLinear]:
    """``{"<prefix>.<e>.gate_proj" | ".up_proj" | ".down_proj": ExpertLinear}`` viewing the fused tensors."""
    layout = layout or expert_layout(experts, prefix)
    n = experts.num_experts
    params = dict(experts.named_parameters())
    sep = "." if prefix else ""
    out: dict[str, ExpertLinear] = {}
    for e in range(n):
        for part, (pname, stored_in_out) in layout.params.items():
            w = _expert_matrix(params[pname], e, n, stored_in_out)
            bias = params.get(pname + "_bias")
            b = bias.data[e] if bias is not None and bias.dim() == 2 else None
            where = f"{prefix}{sep}{pname}"
            if part == "gate_up":
                half = w.shape[0] // 2
                rows = ((slice(0, None, 2), slice(1, None, 2)) if layout.interleaved
                        else (slice(0, half), slice(half, None)))
                for sub, r in zip(("gate_proj", "up_proj"), rows):
                    out[f"{prefix}{sep}{e}.{sub}"] = ExpertLinear(w[r], None if b is None else b[r], where)
            else:
                out[f"{prefix}{sep}{e}.{part}_proj"] = ExpertLinear(w, b, where)
    return out


def expert_views(layer: nn.Module) -> dict[str, ExpertLinear]:
    """Every fused-experts module's per-expert views, by name in the block (structure only, forward untouched)."""
    views: dict[str, ExpertLinear] = {}
    for name, experts in fused_experts_modules(layer).items():
        views.update(expert_linears(experts, name))
    return views


def _activation(experts: nn.Module):
    for holder in (experts, *experts.children()):
        for attr in ("act_fn", "activation_fn"):
            if callable(getattr(holder, attr, None)):
                return getattr(holder, attr)
    return F.silu


def _unfused_forward(experts: nn.Module, linears: dict[str, ExpertLinear], prefix: str, policy: str,
                     layout: ExpertLayout | None = None):
    layout = layout or expert_layout(experts, prefix)
    sep = "." if prefix else ""
    gated = "gate_up" in layout.params or "gate" in layout.params
    act = _activation(experts)

    def mlp(e: int, x: torch.Tensor) -> torch.Tensor:
        if gated:
            g, u = linears[f"{prefix}{sep}{e}.gate_proj"](x), linears[f"{prefix}{sep}{e}.up_proj"](x)
            if hasattr(experts, "_apply_gate"):
                gate_up = torch.stack([g, u], dim=-1).flatten(-2) if layout.interleaved else torch.cat([g, u], dim=-1)
                h = experts._apply_gate(gate_up)
            else:
                h = act(g) * u
        else:
            h = act(linears[f"{prefix}{sep}{e}.up_proj"](x))
        h = linears[f"{prefix}{sep}{e}.down_proj"](h)
        if getattr(experts, "has_post_expert_norm", False):
            h = experts.post_expert_norm(h)
        return h

    def batched(*args: Any, **kwargs: Any) -> torch.Tensor:
        hidden_states = args[0] if args else kwargs[layout.call_names[0]]
        per_expert = hidden_states.reshape(experts.num_experts, -1, hidden_states.shape[-1])
        return torch.cat([mlp(e, per_expert[e]) for e in range(experts.num_experts)]).view(hidden_states.shape)

    def routed(*args: Any, **kwargs: Any) -> torch.Tensor:
        values = list(args) + [kwargs[k] for k in layout.call_names[len(args):3] if k in kwargs]
        hidden_states, top_k_index, top_k_weights = values[:3]
        flat = hidden_states.reshape(-1, hidden_states.shape[-1])
        final = torch.zeros_like(flat)
        for e in range(experts.num_experts):
            token_idx, top_k_pos = torch.where(top_k_index == e)
            if policy == "all":
                out = mlp(e, flat)[token_idx]  # statistics from every token, output from the routed ones
            elif token_idx.numel():
                out = mlp(e, flat[token_idx])
            else:
                continue
            out = out * top_k_weights[token_idx, top_k_pos, None]
            final.index_add_(0, token_idx, out.to(final.dtype))
        return final.view(hidden_states.shape)

    return batched if layout.call == "batched" else routed


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
            layout = expert_layout(experts, name)  # probed here at the latest (the block is on its device)
            linears = expert_linears(experts, name, layout)
            views.update(linears)
            restore.append((experts, experts.__dict__.get("forward")))
            experts.forward = _unfused_forward(experts, linears, name, policy, layout)
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
