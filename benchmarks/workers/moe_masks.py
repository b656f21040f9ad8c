"""Run ONE MoE pruning (kick or llm-compressor) in a fresh process and save per-expert masks; print one JSON line.

Standalone on purpose (imports kick only for ``--side kick``): the llm-compressor side runs under
``benchmarks/.venv-llmcompressor``. Both sides load the same model folder and the same calibration token file and
save ``{matrix name: bool mask}`` with ONE naming for both expert layouts: ``model.layers.<i>.mlp.experts.<e>.
gate_proj|up_proj|down_proj`` (fused ``gate_up_proj [E, 2I, H]`` is split into its gate = first I rows and up
halves; per-expert ``nn.Linear`` modules keep their own names), plus every other Linear of the blocks.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time


def masks(model) -> dict:
    import torch

    out = {}
    for name, mod in model.named_modules():
        if not name.startswith("model.layers."):
            continue
        if isinstance(mod, torch.nn.Linear):
            out[name] = mod.weight.detach() == 0
        for pname, p in mod.named_parameters(recurse=False):
            if p.dim() != 3:
                continue
            for e in range(p.shape[0]):
                if pname == "gate_up_proj":
                    half = p.shape[1] // 2
                    out[f"{name}.{e}.gate_proj"] = p[e, :half].detach() == 0
                    out[f"{name}.{e}.up_proj"] = p[e, half:].detach() == 0
                else:
                    out[f"{name}.{e}.{pname}"] = p[e].detach() == 0
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--side", required=True, choices=["kick", "llmc"])
    ap.add_argument("--model", required=True)
    ap.add_argument("--calib", required=True, help=".pt with {'tokens': LongTensor[n, L]}")
    ap.add_argument("--method", required=True, choices=["wanda", "sparsegpt"])
    ap.add_argument("--save", required=True)
    ap.add_argument("--noncausal", action="store_true",
                    help="kick only: attention modules is_causal=False, i.e. the inputs llm-compressor 0.14 calibrated "
                         "this model with (a control: isolates the expert handling from that difference)")
    args = ap.parse_args()
    args.model, args.calib, args.save = map(os.path.abspath, (args.model, args.calib, args.save))

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    tokens = torch.load(args.calib)["tokens"]
    if args.side == "kick":
        from kick_models.api import prune

        if args.noncausal:
            for module in model.modules():
                if getattr(module, "is_causal", None) is True:
                    module.is_causal = False

        t0 = time.perf_counter()
        prune(model, tokenizer, method=args.method, sparsity=0.5, damp=0.01, blocksize=128, calibration=tokens,
              moe_calibration="all", progress=False)
        seconds = time.perf_counter() - t0
    else:
        import tempfile

        from datasets import Dataset
        from llmcompressor import oneshot
        from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier

        n, seqlen = tokens.shape
        ds = Dataset.from_dict({"input_ids": tokens.tolist(), "attention_mask": torch.ones_like(tokens).tolist()})
        common = dict(sparsity=0.5, mask_structure="0:0", targets=[r"re:model\.layers\.\d+$"],
                      ignore=["re:.*lm_head", r"re:.*mlp\.gate$"])
        recipe = (WandaPruningModifier(**common) if args.method == "wanda"
                  else SparseGPTModifier(**common, dampening_frac=0.01, block_size=128))
        os.chdir(tempfile.mkdtemp(prefix="llmc-moe-"))
        t0 = time.perf_counter()
        oneshot(model=model, processor=tokenizer, dataset=ds, recipe=recipe, num_calibration_samples=n,
                max_seq_length=seqlen, shuffle_calibration_samples=False, pipeline="sequential", log_dir=None,
                moe_calibrate_all_experts=True)
        seconds = time.perf_counter() - t0
    torch.save(masks(model), args.save)
    print(json.dumps({"seconds": seconds, "rss_peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "saved": args.save}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
