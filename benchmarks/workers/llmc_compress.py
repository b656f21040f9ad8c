"""Run ONE llm-compressor 0.14 oneshot compression in a fresh process (executed by benchmarks/.venv-llmcompressor).

Standalone on purpose: this file runs under llm-compressor's own venv (transformers <= 5.17), so it imports
nothing from kick. Prints one JSON line: wall seconds of ``oneshot`` (compression only, model already loaded),
peak RSS after load and at the end (``ru_maxrss``), and where the per-Linear result was saved.

Settings matched to the reference algorithms (see the llm-compressor source in the venv):
* targets are the DECODER LAYERS by regex (``re:model\\.layers\\.\\d+$``) and ``lm_head`` is ignored: the
  default targets would prune lm_head, and a plain class-name string silently prunes nothing in some versions;
* SparseGPT: dampening 0.01, block 128, ``mask_structure`` "0:0" (unstructured) or "2:4";
* GPTQ: 4 bit, asymmetric, group ``--groupsize`` (W4A16_ASYM with the group size replaced; SmolLM2's 576 input
  columns are not a multiple of 128 and llm-compressor cannot quantize a partial group, so the benchmark uses 64),
  no activation ordering (``actorder=None``; its default is "static"), dampening 0.01, block 128;
* sequential pipeline, layer by layer (``sequential_targets`` inferred: the decoder layer class).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--calib", required=True, help=".pt with {'tokens': LongTensor[n, L]}")
    ap.add_argument("--method", required=True, choices=["wanda", "sparsegpt", "gptq"])
    ap.add_argument("--sparsity-type", default="unstructured")
    ap.add_argument("--groupsize", type=int, default=128, help="GPTQ group size")
    ap.add_argument("--save", default="", help="torch.save per-Linear masks (pruning) or weights (gptq) here")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    args.model, args.calib = os.path.abspath(args.model), os.path.abspath(args.calib)
    args.save = os.path.abspath(args.save) if args.save else ""

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from datasets import Dataset
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    tokens = torch.load(args.calib)["tokens"]
    n, seqlen = tokens.shape
    ds = Dataset.from_dict({"input_ids": tokens.tolist(), "attention_mask": torch.ones_like(tokens).tolist()})
    layer_regex = r"re:model\.layers\.\d+$"
    if args.method == "wanda":
        from llmcompressor.modifiers.pruning import WandaPruningModifier

        mask = "2:4" if args.sparsity_type == "2:4" else "0:0"
        recipe = WandaPruningModifier(sparsity=0.5, mask_structure=mask, targets=[layer_regex], ignore=["re:.*lm_head"])
    elif args.method == "sparsegpt":
        from llmcompressor.modifiers.pruning import SparseGPTModifier

        mask = "2:4" if args.sparsity_type == "2:4" else "0:0"
        recipe = SparseGPTModifier(sparsity=0.5, mask_structure=mask, targets=[layer_regex], ignore=["re:.*lm_head"],
                                   dampening_frac=0.01, block_size=128)
    else:
        from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
        from llmcompressor.modifiers.gptq import GPTQModifier

        weights = QuantizationArgs(num_bits=4, type="int", strategy="group", group_size=args.groupsize,
                                   symmetric=False, dynamic=False)
        scheme = QuantizationScheme(targets=["Linear"], weights=weights)
        recipe = GPTQModifier(config_groups={"group_0": scheme}, ignore=["lm_head"], actorder=None,
                              dampening_frac=0.01, block_size=128)
    rss_load = _rss_mib()
    workdir = tempfile.mkdtemp(prefix="llmc-")
    os.chdir(workdir)  # llm-compressor may drop log files into the cwd
    t0 = time.perf_counter()
    oneshot(model=model, processor=tokenizer, dataset=ds, recipe=recipe, num_calibration_samples=n, max_seq_length=seqlen,
            shuffle_calibration_samples=False, pipeline="sequential", log_dir=None)
    seconds = time.perf_counter() - t0
    rss_peak = _rss_mib()

    if args.save:
        out = {}
        for name, mod in model.named_modules():
            if isinstance(mod, torch.nn.Linear) and name.startswith("model.layers."):
                w = mod.weight.detach()
                out[name] = (w == 0) if args.method != "gptq" else w.float().clone()
        torch.save(out, args.save)
    print(json.dumps({"seconds": seconds, "rss_load_mib": rss_load, "rss_peak_mib": rss_peak,
                      "nsamples": n, "seqlen": seqlen, "saved": args.save}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
