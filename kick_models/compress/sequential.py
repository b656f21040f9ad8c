"""THE layer-wise sequential driver shared by every algorithm.

1. Find the decoder layer list (``model.model.layers`` and other common paths).
2. Capture, per calibration batch, the hidden states entering layer 0 and the positional and
   keyword arguments EVERY layer receives (attention mask, position ids, rotary
   ``position_embeddings``, cache position ...). Each layer's ``forward`` is temporarily replaced
   by a recorder; layer 0 runs for real (the model's own block-0 output is kept, and its structure,
   tensor or tuple of any length, is what every later recorder hands back, so the model's own
   unpacking works), and the forward pass stops at the last layer (so ``lm_head`` never runs).
   Per-layer arguments matter: Gemma 2/3 and Qwen give sliding-window layers a different mask (and
   Gemma 3 different rotary embeddings) than global ones. Arguments that are elements of the previous
   layer's output tuple (GLM-DSA's ``prev_topk_indices``) are found by identity (:class:`LayerContract`).
   Block 0's first calibration pass (still dense) must reproduce the model's own block-0 output on
   every batch, else the run is refused naming the block before any weight changes.
3. For each layer: move it to the compute device, hook every compression target
   (:mod:`kick_models.compress.targets`: ``nn.Linear`` minus MoE routers, GPT-2 ``Conv1D``, and the
   per-expert views of fused MoE experts from :func:`kick_models.compress.moe.calibration_view`;
   forward hooks feed the algorithm's ``add_batch``; targets fed the same input tensor, such as
   q/k/v, share ONE accumulation), run all batches, compress every target, free the statistics,
   re-run the compressed layer (its own forward) to produce the next layer's inputs (the hidden
   states and the carried elements of its output tuple), measure every
   >= 2-D weight of the block (:func:`kick_models.compress.targets.measure_block`), move it back.

Algorithms without calibration (magnitude, RTN) skip steps 2-3's forward passes entirely.
``lm_head`` and the embeddings are never touched.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from kick_models.compress import host_memory, memory, placement
from kick_models.compress import moe
from kick_models.compress.spill import QuantParamSpill
from kick_models.compress.compare import outputs_close
from kick_models.compress.base import LayerCompressor, LayerStats
from kick_models.compress.config import UnsupportedModelError
from kick_models.compress.targets import Target, block_roles, block_targets, measure_block

logger = logging.getLogger(__name__)

# Where decoder blocks live in common architectures (first match wins).
LAYER_PATHS = (
    "model.layers",
    "model.language_model.layers",
    "model.text_model.layers",
    "language_model.model.layers",
    "model.decoder.layers",
    "transformer.h",
    "gpt_neox.layers",
    "transformer.blocks",
    "model.model.layers",
)


class _SharingMismatch(RuntimeError):
    """Targets shared an input tensor in the first calibration batch but not in a later one."""


class _StopForward(Exception):
    """Raised by the recorder at the last decoder layer to end the capture pass."""


def _get_path(root: nn.Module, path: str) -> Any:
    obj: Any = root
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def find_decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """``(path, layers)`` of the model's decoder block list; error naming the model class if none is found."""
    for path in LAYER_PATHS:
        layers = _get_path(model, path)
        if isinstance(layers, nn.ModuleList) and len(layers) > 0:
            return path, layers
    raise UnsupportedModelError(
        f"Cannot find the decoder layers of {type(model).__name__}: none of {', '.join(LAYER_PATHS)} is a "
        f"non-empty nn.ModuleList. Add the path to kick_models.compress.sequential.LAYER_PATHS."
    )


def linear_modules(layer: nn.Module) -> dict[str, nn.Linear]:
    """Every ``nn.Linear`` inside a decoder block, by name relative to the block, in definition order."""
    return {name: m for name, m in layer.named_modules() if isinstance(m, nn.Linear)}


# --------------------------------------------------------------------------- devices


def _move_shell(model: nn.Module, layers_path: str, device: torch.device) -> Callable[[], None]:
    """Move every parameter/buffer outside the decoder layers to ``device``; return a function undoing it."""
    prefix = layers_path + "."
    moved: list[tuple[torch.Tensor, torch.device]] = []
    seen: set[int] = set()
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if name.startswith(prefix) or id(tensor) in seen:
            continue
        seen.add(id(tensor))
        if tensor.device != device:
            moved.append((tensor, tensor.device))
            tensor.data = tensor.data.to(device)

    def restore() -> None:
        for tensor, original in moved:
            tensor.data = tensor.data.to(original)

    return restore


# --------------------------------------------------------------------------- capture

_Call = tuple[tuple, dict]  # extra positional args (after hidden states), keyword args


def _dedup(value: Any, pool: list[torch.Tensor]) -> Any:
    """Return an equal tensor already in ``pool`` (sharing memory across batches) or add ``value``."""
    if isinstance(value, torch.Tensor):
        for t in pool:
            if t is value:
                return t
        for t in pool:
            if t.shape == value.shape and t.dtype == value.dtype and t.device == value.device and torch.equal(t, value):
                return t
        pool.append(value)
        return value
    if isinstance(value, tuple):
        return tuple(_dedup(v, pool) for v in value)
    if isinstance(value, list):
        return [_dedup(v, pool) for v in value]
    return value


@dataclass
class LayerContract:
    """What the decoder layers return to the model, read from layer 0's real forward during the capture.

    ``outputs0[b]``: the model's own block-0 output for batch ``b`` (tensor or tuple, as the layer returned it);
    ``carried``: ``{positional index (int) | keyword (str): output index}`` for each argument a layer receives
    that is an element of the previous layer's output tuple (GLM-DSA's ``prev_topk_indices``): the replay hands
    each block the COMPRESSED previous block's values of those, as the model would.
    """

    outputs0: list[Any] = field(default_factory=list)
    carried: dict[int | str, int] = field(default_factory=dict)


def _carried_args(output: Any, rest: tuple, kwargs: dict) -> dict[int | str, int]:
    """Arguments (positional index or keyword) that ARE (identity) a tensor of the previous layer's output tuple."""
    if not isinstance(output, (tuple, list)):
        return {}
    found: dict[int | str, int] = {}
    for k, element in enumerate(output[1:], start=1):
        if not isinstance(element, torch.Tensor):
            continue
        for j, value in enumerate(rest):
            if value is element:
                found[j] = k
        for name, value in kwargs.items():
            if value is element:
                found[name] = k
    return found


def _as_layer_output(template: Any, hidden: torch.Tensor) -> Any:
    """``hidden`` in the structure the real layer returns (``template``: layer 0's output for this batch)."""
    if isinstance(template, (tuple, list)):
        return type(template)([hidden, *template[1:]])
    return hidden


@torch.no_grad()
def capture_inputs(model: nn.Module, layers: nn.ModuleList, layers_path: str, batches: Sequence[torch.Tensor],
                   device: torch.device, contract: LayerContract | None = None
                   ) -> tuple[list[torch.Tensor], list[list[_Call]]]:
    """Hidden states entering layer 0 per batch, and ``calls[layer][batch]`` = the other args each layer gets.

    Layer 0 runs for real (its output, the model's own, goes into ``contract.outputs0``); every later layer
    records its arguments and hands back its input in the structure layer 0 returned, so the model's own
    unpacking of the layers' outputs works (``hidden, topk = layer(...)``). Arguments that are elements of
    the previous layer's output tuple are recorded in ``contract.carried``. Raises
    :class:`UnsupportedModelError` when the model changes the hidden states between layers 0 and 1 (the
    layer-by-layer replay could not reproduce the model's forward)."""
    contract = contract if contract is not None else LayerContract()
    hidden_per_batch: list[torch.Tensor] = []
    calls: list[list[_Call]] = [[] for _ in layers]
    pool: list[torch.Tensor] = []
    last = len(layers) - 1
    saved = [layer.__dict__.get("forward") for layer in layers]
    real_forward0 = layers[0].forward  # bound: the class forward, or accelerate's dispatching wrapper
    returned: list[Any] = [None]  # what the previous layer handed back in this batch
    own: list[Any] = [None]  # layer 0's real output in this batch

    def recorder(index: int) -> Callable[..., Any]:
        def forward(*args: Any, **kwargs: Any) -> Any:
            if args:
                hidden, rest = args[0], args[1:]
            else:
                hidden, rest = kwargs.pop("hidden_states"), ()
            if index > 0:
                contract.carried.update(_carried_args(returned[0], rest, kwargs))
            if index == 1:
                previous = _layer_output(returned[0])
                if previous.shape != hidden.shape or not torch.equal(previous.to(hidden.device), hidden):
                    raise UnsupportedModelError(
                        f"{type(model).__name__}: the hidden states entering {layers_path}.1 are not the output of "
                        f"{layers_path}.0 (the model changes them between decoder layers), so a layer-by-layer "
                        f"calibration replay cannot reproduce the model's forward; calibration-based methods are "
                        f"refused for it (magnitude and RTN need no replay).")
            calls[index].append((_dedup(rest, pool), {k: _dedup(v, pool) for k, v in kwargs.items()}))
            if index == 0:
                hidden_per_batch.append(hidden.detach())
                own[0] = real_forward0(hidden, *rest, **kwargs)
                # kept until block 0's first calibration pass checks it: in host memory, not on the accelerator
                contract.outputs0.append(placement.send(own[0], torch.device("cpu")))
            if index == last:
                raise _StopForward
            returned[0] = own[0] if index == 0 else _as_layer_output(own[0], hidden)
            return returned[0]

        return forward

    # A dispatched model (accelerate hooks: device map, CPU/disk offload) runs where its hooks put it.
    dispatched = placement.is_dispatched(model)
    restore = (lambda: None) if dispatched else _move_shell(model, layers_path, device)
    input_device = placement.model_device(model) if dispatched else device
    try:
        for index, layer in enumerate(layers):
            layer.forward = recorder(index)
        for batch in batches:
            try:
                model(input_ids=batch.to(input_device), use_cache=False)
            except _StopForward:
                pass
            else:
                raise RuntimeError(f"{type(model).__name__}: the forward pass never reached the last decoder layer")
    finally:
        for layer, original in zip(layers, saved):
            if original is None:
                layer.__dict__.pop("forward", None)
            else:
                layer.forward = original
        restore()
    for index, per_layer in enumerate(calls):
        if len(per_layer) != len(batches):
            raise RuntimeError(f"decoder layer {index} was called {len(per_layer)} times for {len(batches)} batches")
    if dispatched:
        hidden_per_batch, calls = placement.send((hidden_per_batch, calls), device)
    return hidden_per_batch, calls


# --------------------------------------------------------------------------- per-layer work


def _run_layer(layer: nn.Module, inps: Sequence[torch.Tensor], calls: Sequence[_Call],
               carried: dict[int | str, int] | None = None, next_calls: list[_Call] | None = None) -> list[torch.Tensor]:
    """The layer's output hidden states per batch; with ``carried``, the elements of its output tuple that the
    model hands to the next layer replace those arguments in ``next_calls`` (in place)."""
    hidden = []
    for b, (x, (rest, kwargs)) in enumerate(zip(inps, calls)):
        out = layer(x, *rest, **kwargs)
        hidden.append(_layer_output(out))
        if carried and next_calls:
            next_rest, next_kwargs = list(next_calls[b][0]), dict(next_calls[b][1])
            for key, k in carried.items():
                if isinstance(key, int):
                    next_rest[key] = out[k]
                else:
                    next_kwargs[key] = out[k]
            next_calls[b] = (tuple(next_rest), next_kwargs)
    return hidden


def _check_block0(layer: nn.Module, inps: Sequence[torch.Tensor], calls: Sequence[_Call], contract: LayerContract,
                  prefix: str) -> None:
    """Block 0, still dense, replayed on its captured inputs must give the model's own block-0 outputs (used where
    no statistics pass does that check on the way); then the kept outputs are freed."""
    with torch.no_grad():
        for b, (x, (rest, kwargs)) in enumerate(zip(inps, calls)):
            check_replayed(layer(x, *rest, **kwargs), contract.outputs0[b], b, prefix)
    contract.outputs0 = []


def check_replayed(got: Any, own: Any, batch: int, prefix: str) -> None:
    """The dense block's output on the captured inputs of ``batch`` must equal the model's own output of that block
    (every element of the output tuple); otherwise :class:`UnsupportedModelError` naming the block."""
    if not outputs_close(got, own):
        raise UnsupportedModelError(
            f"{prefix}: replaying the captured inputs of calibration batch {batch} through the dense block does not "
            f"reproduce the model's own output of this block (expected {_describe(own)}, got {_describe(got)}); "
            f"a calibration on such a replay would be silently wrong, so it is refused.")


def _describe(out: Any) -> str:
    if isinstance(out, torch.Tensor):
        return f"tensor {tuple(out.shape)}"
    if isinstance(out, (tuple, list)):
        return f"{type(out).__name__} of ({', '.join(_describe(x) for x in out)})"
    return type(out).__name__


def _layer_output(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def _true_sequential_groups(layer: nn.Module, linears: dict[str, nn.Linear], inp: torch.Tensor, call: _Call) -> list[list[str]]:
    """Group Linears by execution order and shared input (q,k,v -> o -> gate,up -> down), from one forward pass."""
    order: list[tuple[str, torch.Tensor]] = []
    handles = [m.register_forward_hook(lambda mod, i, o, n=name: order.append((n, i[0])))
               for name, m in linears.items()]
    try:
        layer(inp, *call[0], **call[1])
    finally:
        for h in handles:
            h.remove()
    groups: list[list[str]] = []
    previous = None
    for name, x in order:
        if any(name in g for g in groups):
            continue
        if previous is not None and x is previous:
            groups[-1].append(name)
        else:
            groups.append([name])
        previous = x
    missing = [n for n in linears if not any(n in g for g in groups)]
    if missing:
        groups.append(missing)
    return groups


def _can_share(a: LayerCompressor, b: LayerCompressor) -> bool:
    return type(a) is type(b) and hasattr(a, "share_statistics_from")


def _collect(layer: nn.Module, compressors: dict[str, LayerCompressor], linears: dict[str, nn.Module],
             inps: Sequence[torch.Tensor], calls: Sequence[_Call], prefix: str, share_inputs: bool = True,
             tokens: dict[str, int] | None = None, may_idle: frozenset[str] = frozenset(),
             expected: list[Any] | None = None) -> dict[str, str]:
    """Run all batches through ``layer`` feeding the inputs of the hooked Linears to their compressors.

    With ``share_inputs``, Linears whose forward hooks receive the very same input tensor object in
    the first batch (q/k/v after the attention norm, gate/up after the MLP norm) form a group: only
    the first Linear of the group accumulates, the others then share its statistic
    (``share_statistics_from``). The arithmetic is the same, so the result is bit-identical to one
    accumulation per Linear. Returns ``{follower: leader}``.

    ``expected`` (block 0, dense): the model's own outputs per batch, which this pass must reproduce
    (:func:`check_replayed`). ``tokens`` (if given) receives the number of calibration tokens (input rows) each hooked module saw.
    Modules in ``may_idle`` (MoE experts under ``moe_calibration=routed``) may see none; any other that sees
    none (a weight the model reads directly, e.g. Mamba's ``dt_proj`` on transformers' CPU path) is left to the
    caller (:func:`_unused_targets`).
    """
    counts = dict.fromkeys(compressors, 0)
    leader_of: dict[str, str] = {}
    seen: list[tuple[torch.Tensor, str]] = []  # this batch's distinct inputs, with the Linear that accumulated each
    first = [True]

    def hook(name: str) -> Callable[..., None]:
        def fn(module: nn.Module, args: tuple, output: Any) -> None:
            if moe.statistics_paused():
                return
            x = args[0]
            counts[name] += 1
            if tokens is not None:
                tokens[name] = tokens.get(name, 0) + x.numel() // x.shape[-1]
            if share_inputs:
                leader = next((n for t, n in seen if t is x), None)
                if first[0] and leader is not None and leader != name and _can_share(compressors[name], compressors[leader]):
                    leader_of[name] = leader
                if name in leader_of:
                    if leader != leader_of[name]:
                        raise _SharingMismatch(f"{prefix}.{name} received the same input as {prefix}.{leader_of[name]} in "
                                           f"the first calibration batch but not in a later one; cannot share "
                                           f"statistics (compress_layers(share_inputs=False) avoids this).")
                    return
                if leader is None:
                    seen.append((x, name))
            compressors[name].add_batch(x.detach())

        return fn

    handles = [linears[name].register_forward_hook(hook(name)) for name in compressors]
    try:
        for b, (x, (rest, kwargs)) in enumerate(zip(inps, calls)):
            seen.clear()
            out = layer(x, *rest, **kwargs)
            if expected is not None:  # the block is still dense: its output must be the model's own
                check_replayed(out, expected[b], b, prefix)
            first[0] = False
    finally:
        seen.clear()
        for h in handles:
            h.remove()
    for follower, leader in leader_of.items():
        compressors[follower].share_statistics_from(compressors[leader])
    return leader_of


def _unused_targets(compressors: dict[str, LayerCompressor], tokens: dict[str, int], may_idle: frozenset[str],
                    prefix: str) -> list[str]:
    """Targets whose module received no calibration input at all (the model reads their weight directly): a
    calibration-based method has no statistics for them, so they stay as they are and are listed as kept."""
    unused = [n for n in compressors if tokens.get(n, 0) == 0 and n not in may_idle]
    if unused:
        logger.warning("%s: %s received no calibration input (the model uses the weight without calling the "
                       "module); kept as it is and listed as kept in the report", prefix,
                       ", ".join(f"{prefix}.{n}" for n in unused))
    return unused


def layer_targets(layer: nn.Module) -> dict[str, Target]:
    """The block's compression targets, structure only (fused experts as views, no forward replaced)."""
    return block_targets(layer, linear_modules(layer), moe.expert_views(layer))


def check_expert_layouts(model: nn.Module) -> None:
    """Read every fused-experts module's layout before any work (:func:`moe.expert_layout`: shapes, and the
    module's own forward on a probe input where its weights are materialised); a layout kick cannot prove is
    refused here, naming the module, before any weight changes."""
    path, layers = find_decoder_layers(model)
    for index, layer in enumerate(layers):
        for name, experts in moe.fused_experts_modules(layer).items():
            moe.expert_layout(experts, f"{path}.{index}.{name}")


def check_nm_widths(model: nn.Module, layers: nn.ModuleList, layers_path: str, m: int) -> None:
    """Every compressed matrix needs an input width divisible by M for N:M sparsity (checked before any work)."""
    for index, layer in enumerate(layers):
        for name, target in layer_targets(layer).items():
            if target.in_features % m:
                raise ValueError(f"N:M sparsity with M={m} needs input widths divisible by {m}, but "
                                 f"{layers_path}.{index}.{name} has in_features={target.in_features}.")


def _fill_idle_statistics(compressors: dict[str, LayerCompressor], tokens: dict[str, int], prefix: str) -> list[str]:
    """Experts that saw no token (``moe_calibration=routed``) get identity statistics: compressed by weight
    magnitude, never zeroed by the dead-input rule. Returns their names."""
    idle = [n for n in compressors if tokens.get(n, 0) == 0]
    for name in idle:
        compressors[name].use_identity_statistics()
    if idle:
        logger.warning("%s: %d expert matrix(es) received no calibration token (moe_calibration=routed); "
                       "compressed from identity statistics (by weight magnitude): %s", prefix, len(idle),
                       ", ".join(idle))
    return idle


@torch.no_grad()
def compress_layers(model: nn.Module, make_compressor: Callable[[nn.Linear], LayerCompressor], needs_calibration: bool,
                    tokens: torch.Tensor | None = None, device: torch.device | None = None, batch_size: int | None = None,
                    true_sequential: bool = False, progress: bool = True, desc: str = "compress",
                    share_inputs: bool = True, moe_calibration: str = "all",
                    block_weights: list[dict] | None = None, block_transform: Callable[..., Any] | None = None,
                    transforms: list | None = None) -> list[LayerStats]:
    """Compress every target of every decoder block, layer by layer; return one LayerStats per target.

    ``block_transform(layer, inps, calls, prefix, target_names) -> (dense_outputs, record)``: run on each block
    before its targets are compressed (AWQ, SmoothQuant: :mod:`.transforms`); it sees the block's calibration
    inputs and returns the DENSE block's outputs, which become the next block's inputs (the block is not re-run
    after compression, as the references calibrate every block on the dense model). ``transforms`` receives the
    records. The per-target compressors then only collect statistics if they need any.

    ``share_inputs``: targets fed the same input tensor share one statistic accumulation (see ``_collect``).
    ``moe_calibration``: ``all`` | ``routed``, which tokens MoE experts' statistics see (:mod:`.moe`).
    ``block_weights``: if given, receives one :func:`measure_block` record per >= 2-D block weight.
    """
    layers_path, layers = find_decoder_layers(model)
    fixed_device = torch.device(device) if device is not None else None
    device = fixed_device or placement.model_device(model)  # where calibration inputs are captured and kept
    was_training = model.training
    model.eval()
    stats: list[LayerStats] = []
    inps: list[torch.Tensor] = []
    calls: list[list[_Call]] = []
    contract = LayerContract()
    if needs_calibration:
        if tokens is None:
            raise ValueError("this method needs calibration tokens")
        if batch_size is None:
            batch_size = memory.default_batch_size(model, tokens.shape[0], tokens.shape[1], device, layers[0])
        start = time.perf_counter()
        while True:
            batches = list(torch.split(tokens, batch_size))
            try:
                contract = LayerContract()
                inps, calls = capture_inputs(model, layers, layers_path, batches, device, contract)
                break
            except torch.OutOfMemoryError:  # CUDA ran out: half the batch (nothing was changed yet)
                if batch_size == 1:
                    raise
                logger.warning("CUDA out of memory capturing layer inputs: batch size %d -> %d", batch_size,
                               (batch_size + 1) // 2)
                batch_size = (batch_size + 1) // 2
                torch.cuda.empty_cache()
        logger.info("Captured layer inputs for %d samples in %d batch(es) of <= %d in %.2fs",
                    tokens.shape[0], len(batches), batch_size, time.perf_counter() - start)
    from tqdm.auto import tqdm

    bar = tqdm(list(enumerate(layers)), desc=desc, unit="layer", disable=not progress)
    spill = QuantParamSpill(model)  # quantization parameters of blocks written to disk wait on disk (issue 27)
    block = contextlib.ExitStack()  # the current block held on its compute device (:func:`placement.onloaded`)
    try:
        for index, layer in bar:
            start = time.perf_counter()
            prefix = f"{layers_path}.{index}"
            first_stats = len(stats)
            # Each block is compressed where it runs (its GPU; its hooks' device when offloaded) unless a device is set.
            layer_device = fixed_device or placement.execution_device(layer) or device
            if needs_calibration and layer_device != device:
                inps, calls[index] = placement.send((inps, calls[index]), layer_device)
            block.enter_context(placement.onloaded(layer, layer_device, root=model, prefix=prefix))
            linears = linear_modules(layer)
            unused: set[str] = set()  # parameters of targets no calibration input reached
            dense_outputs = None
            if block_transform is not None:
                if contract.carried:
                    raise UnsupportedModelError(
                        f"{prefix}: this model hands elements of each layer's output tuple to the next layer "
                        f"(arguments {sorted(map(str, contract.carried))}); the block transforms (AWQ, SmoothQuant) "
                        "calibrate every block on the dense block's hidden states only and cannot carry them. "
                        "Use method=rtn or method=gptq for this model.")
                if contract.outputs0:  # block 0: the replay must reproduce the model's own outputs first
                    _check_block0(layer, inps, calls[index], contract, prefix)
                names = [n for n, t in layer_targets(layer).items() if isinstance(t.module, nn.Linear)]
                dense_outputs, record = block_transform(layer, inps, calls[index], prefix, names)
                if transforms is not None:
                    transforms.append(record)
            with moe.calibration_view(layer, moe_calibration) as views:
                targets = block_targets(layer, linears, views)
                hooked = {name: t.module for name, t in targets.items()}
                may_idle = frozenset(n for n, t in targets.items() if t.expert is not None and moe_calibration == "routed")
                if needs_calibration and true_sequential:
                    groups = _true_sequential_groups(layer, hooked, inps[0], calls[index][0])
                else:
                    groups = [list(targets)]
                for group in groups:
                    share = share_inputs
                    while True:  # once, or again with half the batch after a CUDA out-of-memory error
                        compressors = {name: make_compressor(targets[name]) for name in group}
                        for name, comp in compressors.items():
                            if hasattr(comp, "name"):
                                comp.name = f"{prefix}.{name}"
                        seen: dict[str, int] = {}
                        statistics = needs_calibration and any(getattr(c, "needs_calibration", True)
                                                               for c in compressors.values())
                        try:
                            if statistics:
                                _collect(layer, compressors, hooked, inps, calls[index], prefix, share, seen,
                                         may_idle, contract.outputs0 or None)
                                contract.outputs0 = []  # checked (block 0's first pass)
                            elif contract.outputs0:  # no statistics pass: block 0's replay checked on its own
                                _check_block0(layer, inps, calls[index], contract, prefix)
                            break
                        except _SharingMismatch as exc:  # inputs shared only sometimes: one accumulation each
                            logger.info("%s; collecting again without sharing", exc)
                            for comp in compressors.values():
                                comp.free()
                            del compressors
                            share = False
                        except torch.OutOfMemoryError as exc:
                            for comp in compressors.values():
                                comp.free()
                            del compressors
                            # block 0's own outputs (still to check) are split with the batches
                            own = [[((o,), {}) for o in contract.outputs0]] if contract.outputs0 else []
                            inps, calls = memory.halve_batches(inps, calls + own, index, f"calibrating {prefix}", exc)
                            if own:
                                contract.outputs0 = [call[0][0] for call in calls.pop()]
                    if statistics:
                        _fill_idle_statistics({n: c for n, c in compressors.items() if n in may_idle}, seen, prefix)
                        for name in _unused_targets(compressors, seen, may_idle, prefix):
                            compressors.pop(name).free()
                            unused.add(targets[name].param)
                    for name, comp in compressors.items():
                        s = comp.compress()
                        s.name, s.block, s.param = f"{prefix}.{name}", index, f"{prefix}.{targets[name].param}"
                        s.expert, s.in_features = targets[name].expert, targets[name].in_features
                        if statistics:
                            s.tokens = seen.get(name, 0)
                        stats.append(s)
                        comp.free()
                    del compressors
            if block_weights is not None:
                roles = block_roles(layer, linears)
                roles.update(dict.fromkeys(unused, "unused"))
                block_weights.extend(measure_block(layer, roles, prefix, index))
            if dense_outputs is not None:  # re-split if the batches were halved after the transform (CUDA OOM)
                if [x.shape[0] for x in dense_outputs] != [x.shape[0] for x in inps]:
                    dense_outputs = list(torch.cat(dense_outputs).split([x.shape[0] for x in inps]))
                inps = dense_outputs
            while needs_calibration and dense_outputs is None and index + 1 < len(layers):
                try:
                    inps = _run_layer(layer, inps, calls[index], contract.carried, calls[index + 1])
                    break
                except torch.OutOfMemoryError as exc:
                    inps, calls = memory.halve_batches(inps, calls, index, f"running {prefix}", exc)
            calls_done = calls[index] if calls else None
            if calls:
                calls[index] = []  # free this layer's masks/embeddings
            del calls_done
            block.close()  # offloaded weights written back where they live, moved tensors back home
            spill.block_done(prefix, stats[first_stats:])
            if layer_device.type == "cuda":
                torch.cuda.empty_cache()
            host_memory.release_freed()  # the block's freed tensors back to the system, not kept by malloc (issue 27)
            logger.info("%s: compressed %d matrices in %.2fs", prefix, len(targets), time.perf_counter() - start)
    except BaseException as exc:
        block.__exit__(type(exc), exc, exc.__traceback__)  # nothing written back for a failed block
        raise
    finally:
        bar.close()
        model.train(was_training)
    return stats
