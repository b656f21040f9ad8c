"""Calibration memory (issue 18): the batch-size budget counts stored inputs/outputs and Hessians, and a CUDA
out-of-memory error during calibration is retried with half the batch.

No GPU here: the out-of-memory error is raised by a real forward pre-hook on a module of a real tiny llama
(``torch.OutOfMemoryError``, the exception CUDA's allocator raises) whenever that module sees a batch larger
than 2 samples, i.e. what a device with room for two samples would do."""

from __future__ import annotations

import pytest
import torch
from tiny import make_tiny_model

from kick_models import prune
from kick_models.compress import memory

TOKENS = torch.randint(0, 300, (4, 24), generator=torch.Generator().manual_seed(0))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _room_for_two(module: torch.nn.Module, calls: list[int], only_call: int | None = None):
    def pre_hook(mod, args, kwargs):
        x = args[0] if args else next(iter(kwargs.values()))
        calls.append(x.shape[0])
        if x.shape[0] > 2 and (only_call is None or len(calls) == only_call):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated: 2 samples fit)")

    return module.register_forward_pre_hook(pre_hook, with_kwargs=True)


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
@pytest.mark.parametrize("where", ["capture", "block"])
def test_out_of_memory_retries_with_half_the_batch(method, where):
    reference = make_tiny_model("llama", layers=2)
    prune(reference, None, method=method, sparsity=0.5, calibration=TOKENS, batch_size=2, progress=False)
    model = make_tiny_model("llama", layers=2)
    calls: list[int] = []
    module = model.model.embed_tokens if where == "capture" else model.model.layers[0].self_attn
    handle = _room_for_two(module, calls)
    prune(model, None, method=method, sparsity=0.5, calibration=TOKENS, batch_size=4, progress=False)
    handle.remove()
    assert calls[0] == 4 and 4 not in calls[1:] and set(calls[1:]) == {2}, calls
    # every pass after the retry saw the same batches as a run started with batch_size=2: bit-identical
    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), name


def test_out_of_memory_producing_block_outputs_is_retried():
    reference = make_tiny_model("llama", layers=2)
    prune(reference, None, method="wanda", sparsity=0.5, calibration=TOKENS, batch_size=4, progress=False)
    model = make_tiny_model("llama", layers=2)
    calls: list[int] = []
    # call 1: block 0 runs for real in the capture (its own output), call 2 calibrates, call 3 = outputs
    handle = _room_for_two(model.model.layers[0].mlp, calls, only_call=3)
    prune(model, None, method="wanda", sparsity=0.5, calibration=TOKENS, batch_size=4, progress=False)
    handle.remove()
    assert calls == [4, 4, 4, 2, 2], calls
    # block 0 compressed from the same single batch of 4; its outputs then produced in two halves
    for name in ("model.layers.0.mlp.down_proj.weight", "model.layers.0.self_attn.q_proj.weight"):
        assert torch.equal(model.get_parameter(name), reference.get_parameter(name))
    out, ref = model(TOKENS).logits, reference(TOKENS).logits
    assert torch.allclose(out, ref, atol=1e-4), (out - ref).abs().max()


def test_halving_stops_at_one_sample():
    exc = torch.OutOfMemoryError("CUDA out of memory")
    with pytest.raises(torch.OutOfMemoryError):
        memory.halve_batches([torch.zeros(1, 3, 8)] * 2, [[((), {})] * 2], 0, "testing", exc)
    inps, calls = memory.halve_batches([torch.zeros(3, 5, 8)], [[((), {"mask": torch.ones(3, 1, 5, 5),
                                                                     "pos": torch.arange(5)})]], 0, "testing", exc)
    assert [x.shape[0] for x in inps] == [2, 1]
    assert [c[1]["mask"].shape[0] for c in calls[0]] == [2, 1]
    assert all(c[1]["pos"].shape == (5,) for c in calls[0])


def test_statistics_budget_counts_hessians_per_weight_and_expert():
    model = make_tiny_model("llama", layers=1, hidden=64, intermediate=128)
    hessians, widest, block = memory.block_statistics_bytes(model.model.layers[0])
    # q, k, v, o, gate, up read 64 inputs; down_proj reads 128
    assert hessians == 6 * 64 * 64 * 4 + 128 * 128 * 4
    assert widest == 64 * 128 * 4 * 3
    assert block == sum(p.numel() * 4 for p in model.model.layers[0].parameters())
    experts = torch.nn.Module()
    experts.down_proj = torch.nn.Parameter(torch.zeros(8, 64, 128))  # fused [experts, out, in]
    assert memory.block_statistics_bytes(experts)[0] == 8 * 128 * 128 * 4
