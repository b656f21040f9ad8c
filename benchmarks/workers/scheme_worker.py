"""Run ONE compressed-tensors scheme quantization in a fresh process, with kick or with llm-compressor 0.14.

    python scheme_worker.py --side kick --model DIR --calib calib.pt --scheme NVFP4A16 [--method gptq] [--group-size 64]
    .venv-llmc/bin/python scheme_worker.py --side llmc ...

Standalone on purpose: under llm-compressor's own venv (transformers <= 5.17) it imports nothing from kick.
Prints one JSON line: wall seconds of the quantization call (model already loaded) and the process's peak RSS.
``--save`` writes, per decoder-block Linear, the fake-quantized weight (llm-compressor keeps the dense weight
in memory after RTN, so its weight is computed with compressed-tensors' ``forward_quantize`` from the scales
its observers set; GPTQ writes the quantized weight itself), the weight global scale and the static input
scale / global scale, for the comparison.

llm-compressor settings: ``QuantizationModifier`` (rtn) or ``GPTQModifier`` (gptq: ``actorder=None``,
dampening 0.01, block 128) with the preset scheme on ``Linear``, ``ignore=["lm_head"]``, the sequential
pipeline, the same calibration tokens (static activation schemes and GPTQ).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--side", required=True, choices=["kick", "llmc"])
    ap.add_argument("--model", required=True)
    ap.add_argument("--calib", required=True, help=".pt with {'tokens': LongTensor[n, L]}")
    ap.add_argument("--scheme", required=True)
    ap.add_argument("--method", default="rtn", choices=["rtn", "gptq"])
    ap.add_argument("--group-size", type=int, default=0)
    ap.add_argument("--uses-data", action="store_true", help="the scheme/method calibrates on data")
    ap.add_argument("--save", default="")
    args = ap.parse_args()
    args.model, args.calib = os.path.abspath(args.model), os.path.abspath(args.calib)
    args.save = os.path.abspath(args.save) if args.save else ""

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    tokens = torch.load(args.calib)["tokens"]
    group = args.group_size or None
    if args.side == "kick":
        import compressed_tensors.quantization  # noqa: F401  (imported before timing, as on llm-compressor's side)

        from kick_models import quantize
        from kick_models.compress import schemes  # noqa: F401

        t0 = time.perf_counter()
        report = quantize(model, None, scheme=args.scheme, method=args.method, group_size=group,
                          calibration=tokens if args.uses_data else None, progress=False)
        seconds = time.perf_counter() - t0
        params = {s.name: s.quant_params for s in report.layers}
        fq = {name: mod.weight.detach().clone() for name, mod in model.named_modules()
              if isinstance(mod, torch.nn.Linear) and name.startswith("model.layers.")}
    else:
        from compressed_tensors.quantization import preset_name_to_scheme
        from compressed_tensors.quantization.lifecycle.forward import forward_quantize
        from datasets import Dataset
        from llmcompressor import oneshot
        from llmcompressor.modifiers.quantization import (
            GPTQModifier,
            QuantizationModifier,
        )

        scheme = preset_name_to_scheme(args.scheme, ["Linear"])
        if group:
            scheme.weights.group_size = group
        if args.method == "gptq":
            recipe = GPTQModifier(config_groups={"group_0": scheme}, ignore=["lm_head"], actorder=None,
                                  dampening_frac=0.01, block_size=128)
        else:
            recipe = QuantizationModifier(config_groups={"group_0": scheme}, ignore=["lm_head"])
        tokenizer = AutoTokenizer.from_pretrained(args.model)
        kwargs = {}
        if args.uses_data:
            n, seqlen = tokens.shape
            kwargs = dict(dataset=Dataset.from_dict({"input_ids": tokens.tolist(),
                                                     "attention_mask": torch.ones_like(tokens).tolist()}),
                          num_calibration_samples=n, max_seq_length=seqlen, shuffle_calibration_samples=False,
                          pipeline="sequential")
        os.chdir(tempfile.mkdtemp(prefix="llmc-"))
        t0 = time.perf_counter()
        oneshot(model=model, processor=tokenizer, recipe=recipe, log_dir=None, **kwargs)
        seconds = time.perf_counter() - t0
        params, fq = {}, {}
        for name, mod in model.named_modules():
            if isinstance(mod, torch.nn.Linear) and name.startswith("model.layers."):
                params[name] = {k: getattr(mod, k).detach().clone() for k in
                                ("weight_global_scale", "input_scale", "input_global_scale") if hasattr(mod, k)}
                w = mod.weight.detach()
                if args.method != "gptq":
                    w = forward_quantize(mod, w, "weight", mod.quantization_scheme.weights)
                fq[name] = w.clone()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    if args.save:
        keep = ("weight_global_scale", "input_scale", "input_global_scale")
        torch.save({"weights": fq, "params": {n: {k: v for k, v in p.items() if k in keep} for n, p in params.items()}},
                   args.save)
    print(json.dumps({"seconds": seconds, "rss_peak_mib": peak, "saved": args.save}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
