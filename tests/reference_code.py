"""The vendored reference code (tests/reference/, unmodified, MIT) as importable modules, and the CUDA device it
was written for, emulated on the CPU. Used by tests/test_awq_smoothquant_reference.py and
benchmarks/bench_awq_smoothquant.py.

:func:`emulated_cuda`: ``.cuda()`` keeps a tensor or module where it is; ``Tensor.cpu()`` copies (from a GPU it
does; on the CPU it returns the same storage, and llm-awq's ``org_sd = {k: v.cpu() ...}`` backup would then alias
the very weights it is meant to restore). ``awq_inference_engine`` (the compiled kernels that ``qmodule.py``
imports) is an empty module: the code under comparison never calls it.
"""

from __future__ import annotations

import contextlib
import sys
import types
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn

REFERENCE = Path(__file__).parent / "reference"


@contextlib.contextmanager
def emulated_cuda():
    saved = (nn.Module.cuda, torch.Tensor.cuda, torch.Tensor.cpu)
    nn.Module.cuda = lambda self, device=None: self
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.Tensor.cpu = lambda self, *a, **k: self.clone()
    try:
        yield
    finally:
        nn.Module.cuda, torch.Tensor.cuda, torch.Tensor.cpu = saved


def load_references() -> types.SimpleNamespace:
    """The reference modules: auto_scale, auto_clip, quantizer (llm-awq); smooth, calibration, fake_quant."""
    sys.modules.setdefault("awq_inference_engine", types.ModuleType("awq_inference_engine"))
    for sub in ("llm_awq", "smoothquant"):
        if str(REFERENCE / sub) not in sys.path:
            sys.path.insert(0, str(REFERENCE / sub))
    from awq.quantize import auto_clip, auto_scale, quantizer
    from smoothquant import calibration, fake_quant, smooth

    return types.SimpleNamespace(auto_scale=auto_scale, auto_clip=auto_clip, quantizer=quantizer, smooth=smooth,
                                 calibration=calibration, fake_quant=fake_quant)


def reference_awq_block(ref, layer: nn.Module, inps: torch.Tensor, layer_kwargs: dict, w_bit: int, q_config: dict):
    """The body of llm-awq's ``run_awq`` loop for one block (input features and the next block's input from the
    dense block, then ``auto_scale_block`` / ``apply_scale`` / ``auto_clip_block`` / ``apply_clip``), as there.
    Returns ``(next input, scales_list, clip_list)``."""
    named_linears = {name: m for name, m in layer.named_modules() if isinstance(m, nn.Linear)}
    input_feat = defaultdict(list)
    handles = [m.register_forward_hook(lambda mod, x, y, name=name: input_feat[name].append(x[0].detach().cpu()))
               for name, m in named_linears.items()]
    inps = layer(inps, **layer_kwargs)
    inps = inps[0] if isinstance(inps, tuple) else inps
    for h in handles:
        h.remove()
    input_feat = {k: torch.cat(v, dim=0) for k, v in input_feat.items()}
    scales_list = ref.auto_scale.auto_scale_block(layer, layer_kwargs, w_bit=w_bit, q_config=q_config,
                                                  input_feat=input_feat)
    ref.auto_scale.apply_scale(layer, scales_list, input_feat_dict=input_feat)
    clip_list = ref.auto_clip.auto_clip_block(layer, w_bit=w_bit, q_config=q_config, input_feat=input_feat)
    ref.auto_clip.apply_clip(layer, clip_list)
    return inps, scales_list, clip_list
