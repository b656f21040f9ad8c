"""The decoder-layer contract read from the model, not assumed; fused expert layouts read from the module.

* Layers returning tuples the model unpacks (GLM-DSA: ``hidden, topk = layer(...)`` with ``prev_topk_indices``
  carried to the next layer; Bamba: ``hidden, attn_weights``) compress with 1, 2 and 4 calibration samples, and
  the captured block-0 inputs replayed through the dense block give the model's own block-0 output (from the
  model's ``output_hidden_states``, not from kick).
* A model that changes the hidden states between layers, and a fused-experts module whose layout cannot be
  told, are refused clearly before any weight changes.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kick_models import prune, quantize
from kick_models.compress.config import UnsupportedModelError
from kick_models.compress.sequential import LayerContract, _run_layer, capture_inputs, find_decoder_layers
from registry import VOCAB, shrunk_model

TUPLE_FAMILIES = ("glm_moe_dsa", "bamba")


def model_of(family: str) -> nn.Module:
    try:
        return shrunk_model(family)
    except (ValueError, KeyError, ImportError) as exc:  # another transformers without the family
        pytest.skip(f"transformers cannot build {family}: {exc}")


def tokens(n: int) -> torch.Tensor:
    return torch.randint(1, VOCAB, (n, 12), generator=torch.Generator().manual_seed(n))


@pytest.mark.parametrize("n", [1, 2, 4])
@pytest.mark.parametrize("family", TUPLE_FAMILIES)
def test_tuple_returning_layers_replay_the_models_own_block_outputs(family, n, one_torch_thread):
    model = model_of(family)
    calib = tokens(n)
    path, layers = find_decoder_layers(model)
    with torch.no_grad():
        own = model(calib, output_hidden_states=True, use_cache=False).hidden_states  # own[1]: block 0's output
        contract = LayerContract()
        inps, calls = capture_inputs(model, layers, path, list(torch.split(calib, 2)), torch.device("cpu"), contract)
        out0 = torch.cat(_run_layer(layers[0], inps, calls[0], contract.carried, calls[1]))
    assert torch.allclose(out0, own[1], atol=1e-5)
    real = contract.outputs0[0]
    # what the layer really returns, kept as it is (5.x: (hidden, topk) / (hidden, attn_weights); 4.x: (hidden,))
    assert isinstance(real, tuple) and torch.equal(real[0], own[1][: real[0].shape[0]])
    if family == "glm_moe_dsa":  # the model hands layer 0's top-k indices to layer 1 (prev_topk_indices)
        assert "prev_topk_indices" in contract.carried
        assert calls[1][0][1]["prev_topk_indices"] is not None


@pytest.mark.parametrize("n", [1, 2, 4])
@pytest.mark.parametrize("family", TUPLE_FAMILIES)
def test_tuple_returning_layers_compress_with_any_number_of_samples(family, n, one_torch_thread):
    model = model_of(family)
    report = prune(model, None, method="wanda", calibration=tokens(n), progress=False, allow_partial=True,
                   batch_size=2)
    path, layers = find_decoder_layers(model)
    kept = report.summary()["coverage"]["kept"]
    for i, layer in enumerate(layers):
        for name, m in layer.named_modules():
            full = f"{path}.{i}.{name}.weight"
            if isinstance(m, nn.Linear) and full not in kept:
                W = m.weight
                assert ((W == 0).sum(1) == W.shape[1] // 2).all(), full


def test_carried_outputs_come_from_the_compressed_block():
    """The top-k indices layer 1 receives in the replay are the ones the COMPRESSED layer 0 computes."""
    model = model_of("glm_moe_dsa")
    path, layers = find_decoder_layers(model)
    calib = tokens(2)
    with torch.no_grad():
        contract = LayerContract()
        inps, calls = capture_inputs(model, layers, path, [calib], torch.device("cpu"), contract)
        dense_topk = contract.outputs0[0][1]
        for p in layers[0].parameters():
            if p.dim() >= 2:
                p.mul_(torch.rand_like(p) > 0.5)  # change block 0
        expected = layers[0](inps[0], *calls[0][0][0], **calls[0][0][1])[1]
        _run_layer(layers[0], inps, calls[0], contract.carried, calls[1])
    assert torch.equal(calls[1][0][1]["prev_topk_indices"], expected)
    assert not torch.equal(expected, dense_topk)


def test_a_replay_that_differs_from_the_models_forward_is_refused_naming_the_block(one_torch_thread):
    """Block 0's output changes from call to call (a stateful forward hook): the captured inputs replayed through
    the dense block cannot give the model's own output, so the run stops before any weight changes."""
    from tiny import make_tiny_model

    model = make_tiny_model("llama")
    calls = [0]

    def stateful(module, args, output):
        calls[0] += 1
        return output + calls[0]

    model.model.layers[0].register_forward_hook(stateful)
    before = {n: p.clone() for n, p in model.named_parameters()}
    with pytest.raises(UnsupportedModelError, match=r"model\.layers\.[01]"):
        prune(model, None, method="wanda", calibration=tokens(2), progress=False)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


class AmbiguousExperts(nn.Module):
    """Fused experts whose width equals the hidden size and with no layout flag: [E, 64, 64] twice."""

    def __init__(self) -> None:
        super().__init__()
        self.num_experts, self.hidden_size = 4, 64
        self.up_proj = nn.Parameter(torch.randn(4, 64, 64))
        self.down_proj = nn.Parameter(torch.randn(4, 64, 64))

    def forward(self, hidden_states, top_k_index, top_k_weights):
        return hidden_states


def test_ambiguous_expert_layout_is_refused_before_calibration(one_torch_thread):
    model = model_of("qwen3_moe")
    model.model.layers[1].mlp.experts = AmbiguousExperts()
    before = {n: p.clone() for n, p in model.named_parameters()}
    for run in (lambda: quantize(model, None, method="rtn", wbits=4, progress=False),
                lambda: prune(model, None, method="wanda", calibration=tokens(2), progress=False)):
        with pytest.raises(UnsupportedModelError, match=r"mlp\.experts.*up_proj.*hidden size 64"):
            run()
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_expert_layout_the_module_does_not_compute_is_refused(one_torch_thread):
    """Shapes decide the orientation, but the module's own forward must agree (here it multiplies differently)."""
    model = model_of("qwen3_moe")
    experts = model.model.layers[1].mlp.experts
    if isinstance(experts, nn.ModuleList):
        pytest.skip("this transformers stores experts as nn.Linear lists (no fused layout to read)")
    experts.forward = lambda hidden_states, top_k_index, top_k_weights: hidden_states  # not what the weights say
    type(experts)  # noqa: B018
    with pytest.raises(UnsupportedModelError, match=r"does not reproduce the module's own forward"):
        quantize(model, None, method="rtn", wbits=4, progress=False)
