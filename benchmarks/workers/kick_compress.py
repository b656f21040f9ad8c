"""Run ONE kick compression (``kick_models.api``) in a fresh process; print one JSON line.

Mirrors ``llmc_compress.py`` (same model folder, same calibration token file, same settings) so that wall time
and peak RSS are comparable: ``seconds`` covers the ``prune``/``quantize`` call only (model already loaded).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _status_mib(field: str) -> float | None:
    """``VmRSS`` / ``VmHWM`` of this process from /proc (Linux), in MiB."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--calib", required=True, help=".pt with {'tokens': LongTensor[n, L]}")
    ap.add_argument("--method", required=True, choices=["magnitude", "wanda", "sparsegpt", "gptq"])
    ap.add_argument("--sparsity-type", default="unstructured")
    ap.add_argument("--groupsize", type=int, default=128, help="GPTQ group size")
    ap.add_argument("--layers", type=int, default=0, help="keep only the first N decoder layers (scaling runs)")
    ap.add_argument("--batch-size", type=int, default=0, help="calibration batch size (0: kick's default)")
    ap.add_argument("--save", default="", help="torch.save per-Linear masks (pruning) or weights (gptq) here")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--profile", default="", help="write a torch.profiler table (top ops by CPU time) here")
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    from kick_models.api import prune, quantize
    from kick_models.compress.host_memory import reset_hwm

    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    if args.layers:
        model.model.layers = model.model.layers[: args.layers]
        model.config.num_hidden_layers = args.layers
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    tokens = torch.load(args.calib)["tokens"]
    rss_load = _rss_mib()
    hwm_reset = reset_hwm()  # VmHWM reset: the compression's own peak (Linux)
    rss_now = _status_mib("VmRSS")  # current RSS with the model loaded (the load's transient peak is gone)
    kwargs = {"progress": False}
    if args.batch_size:
        kwargs["batch_size"] = args.batch_size

    def run():
        if args.method == "gptq":
            return quantize(model, tokenizer, method="gptq", wbits=4, groupsize=args.groupsize, sym=False, act_order=False,
                            damp=0.01, blocksize=128, calibration=tokens, **kwargs)
        if args.method == "magnitude":
            return prune(model, tokenizer, method="magnitude", sparsity_type=args.sparsity_type,
                         calibration="c4", **kwargs)
        return prune(model, tokenizer, method=args.method, sparsity=0.5 if args.sparsity_type == "unstructured" else None,
                     sparsity_type=args.sparsity_type, damp=0.01, blocksize=128, calibration=tokens, **kwargs)

    t0 = time.perf_counter()
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            report = run()
        with open(args.profile, "w") as fh:
            fh.write(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    else:
        report = run()
    seconds = time.perf_counter() - t0
    rss_peak = _rss_mib()
    hwm = _status_mib("VmHWM") if hwm_reset else None

    if args.save:
        out = {}
        for name, mod in model.named_modules():
            if isinstance(mod, torch.nn.Linear) and name.startswith("model.layers."):
                w = mod.weight.detach()
                out[name] = (w == 0) if args.method != "gptq" else w.float().clone()
        torch.save(out, args.save)
    cfg = model.config
    print(json.dumps({"seconds": seconds, "report_seconds": report.seconds, "rss_load_mib": rss_load,
                      "rss_peak_mib": rss_peak,
                      "rss_after_load_mib": rss_now, "hwm_during_compress_mib": hwm, "nsamples": int(tokens.shape[0]), "seqlen": int(tokens.shape[1]),
                      "sparsity": report.measured_sparsity(), "n_layers": len(model.model.layers),
                      "hidden": cfg.hidden_size, "intermediate": cfg.intermediate_size, "saved": args.save}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
