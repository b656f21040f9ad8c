"""AWQ and SmoothQuant on real SmolLM2-135M blocks against the unmodified reference code, bit for bit.

    python benchmarks/bench_awq_smoothquant.py [--blocks 2] [--nsamples 8] [--seqlen 512] [--group 64]
                                                [--alpha 0.5,0.85]

AWQ (W4A16_ASYM, zero point on as llm-awq; group 64 because SmolLM2's 576 columns are not a multiple of 128):
llm-awq's ``run_awq`` loop (vendored ``auto_scale.py`` / ``auto_clip.py``, tests/reference/) and kick's
:class:`~kick_models.compress.awq.AWQ` run block by block on the same C4 calibration windows (one batch, as the
reference); every block's scales, clip values and the final quantized weights are compared (kick's weights
through ``quantize(scheme=W4A16_ASYM, method=awq, quantizer=reference)``, the path lm-eval uses), and the
transform's wall time of both sides (one run each, alternating which side runs first per block).

SmoothQuant (W8A8): the reference pipeline (``get_act_scales`` on C4 texts, ``smooth_lm``, ``quantize_model``
with per-channel weights / per-token activations) against ``quantize(scheme=W8A8, smoothquant=alpha,
quantizer=reference)`` on the same token windows (one batch each, as the reference): smoothed norms, quantized
weights, and the logits of the whole truncated model on held-out tokens. Then the same with kick's default
quantizer (the scheme's compressed-tensors arithmetic): the transform is the same, the quantized weights differ on
a share of the weights (absmax / 127.5 grid instead of absmax / 127) -- the share is printed.

Prints one line per comparison and a summary; exit status 1 if anything the reference defines differs.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # reference_code: the vendored reference modules and the CUDA emulation
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
import torch
from reference_code import emulated_cuda, load_references, reference_awq_block


def load_model(blocks: int):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = common.smollm2_truncated_dir(blocks)
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(folder)


def linear_names(block) -> list[str]:
    return [n for n, m in block.named_modules() if isinstance(m, torch.nn.Linear)]


def bench_awq(ref, model, tokens: torch.Tensor, group: int) -> list[dict]:
    from kick_models.api import quantize
    from kick_models.compress.awq import AWQ, AWQSettings, pseudo_quantize
    from kick_models.compress.scaling import block_mappings
    from kick_models.compress.sequential import capture_inputs, find_decoder_layers

    q_config = {"zero_point": True, "q_group_size": group}
    ref_model, kick_model, api_model = copy.deepcopy(model), copy.deepcopy(model), copy.deepcopy(model)
    rows = []
    path, ref_layers = find_decoder_layers(ref_model)
    inps, calls = capture_inputs(ref_model, ref_layers, path, [tokens], torch.device("cpu"))
    kick_layers = find_decoder_layers(kick_model)[1]
    ref_x = kick_x = inps[0]
    for i, (ref_layer, kick_layer) in enumerate(zip(ref_layers, kick_layers)):
        def run_ref(ref_layer=ref_layer, ref_x=ref_x):
            with emulated_cuda():
                return reference_awq_block(ref, ref_layer, ref_x, dict(calls[0][0][1]), 4, q_config)

        def run_kick(kick_layer=kick_layer, kick_x=kick_x):
            return AWQ(kick_layer, block_mappings(kick_layer), AWQSettings(bits=4, group_size=group)).run(
                [kick_x], [calls[0][0]])

        order = (run_ref, run_kick) if i % 2 == 0 else (run_kick, run_ref)
        seconds, results = {}, {}
        for fn in order:
            start = time.perf_counter()
            results[fn.__name__] = fn()
            seconds[fn.__name__] = time.perf_counter() - start
        ref_x, scales_list, clip_list = results["run_ref"]
        (outs, result) = results["run_kick"]
        kick_x = outs[0]
        for prev, names, scales in scales_list:
            rows.append({"what": "awq scale", "block": i, "name": f"{prev} -> {','.join(names)}",
                         "equal": torch.equal(result.scales[(prev, tuple(names))], scales)})
        for name, max_val in clip_list:
            rows.append({"what": "awq clip", "block": i, "name": name, "equal": torch.equal(result.clips[name], max_val)})
        rows.append({"what": "awq clip set", "block": i, "name": ",".join(n for n, _ in clip_list),
                     "equal": sorted(result.clips) == sorted(n for n, _ in clip_list)})
        rows.append({"what": "awq next input", "block": i, "name": "dense block output", "equal": torch.equal(kick_x, ref_x)})
        rows.append({"what": "awq seconds", "block": i, "name": "transform", "kick": seconds["run_kick"],
                     "reference": seconds["run_ref"], "ratio": seconds["run_kick"] / seconds["run_ref"]})
        for name in linear_names(ref_layer):  # the reference quantizes after all blocks: pseudo_quantize_model_weight
            m = ref_layer.get_submodule(name)
            m.weight.data = ref.quantizer.pseudo_quantize_tensor(m.weight.data, n_bit=4, **q_config)
            kick_m = kick_layer.get_submodule(name)
            kick_m.weight.data = pseudo_quantize(kick_m.weight.data, 4, group)
    quantize(api_model, None, scheme="W4A16_ASYM", method="awq", group_size=group, quantizer="reference",
             calibration=tokens, batch_size=tokens.shape[0], progress=False)
    for (name, a), (_, b), (_, c) in zip(api_model.named_parameters(), ref_model.named_parameters(),
                                         kick_model.named_parameters()):
        if ".layers." in name:
            rows.append({"what": "awq weight", "block": int(name.split(".layers.")[1].split(".")[0]), "name": name,
                         "equal": torch.equal(a, b) and torch.equal(c, b)})
    return rows


def smoothquant_texts(tok, n: int, length: int) -> list[str]:
    import pyarrow.parquet as pq

    texts = pq.read_table(common.data_dir() / "c4" / "c4_validation_2k.parquet", columns=["text"]).column("text").to_pylist()
    out = [t for t in texts if len(tok(t).input_ids) > length]
    return out[:n]


def bench_smoothquant(ref, model, tok, nsamples: int, seqlen: int, alpha: float) -> list[dict]:
    from kick_models.api import quantize
    texts = smoothquant_texts(tok, nsamples, seqlen)
    rows = []
    ref_model, kick_model, scheme_model = copy.deepcopy(model), copy.deepcopy(model), copy.deepcopy(model)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "calib.jsonl"
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        start = time.perf_counter()
        with emulated_cuda():
            act_scales = ref.calibration.get_act_scales(ref_model, tok, str(path), num_samples=len(texts), seq_len=seqlen)
            ref.smooth.smooth_lm(ref_model, act_scales, alpha)
            ref.fake_quant.quantize_model(ref_model)
        ref_seconds = time.perf_counter() - start
    tokens = torch.cat([tok(t, return_tensors="pt", max_length=seqlen, truncation=True).input_ids for t in texts])
    start = time.perf_counter()
    quantize(kick_model, None, scheme="W8A8", smoothquant=alpha, quantizer="reference", calibration=tokens,
             batch_size=1, progress=False)
    kick_seconds = time.perf_counter() - start
    quantize(scheme_model, None, scheme="W8A8", smoothquant=alpha, calibration=tokens, batch_size=1, progress=False)
    ref_params = dict(ref_model.named_buffers()) | dict(ref_model.named_parameters())
    differ = total = 0
    for name, a in kick_model.named_parameters():
        if ".layers." not in name:
            continue
        block = int(name.split(".layers.")[1].split(".")[0])
        rows.append({"what": f"smoothquant {alpha} {'norm' if 'norm' in name else 'weight'}", "block": block,
                     "name": name, "equal": torch.equal(a, ref_params[name])})
    for (name, a), (_, b) in zip(scheme_model.named_parameters(), kick_model.named_parameters()):
        if ".layers." in name and "norm" in name:
            rows.append({"what": f"smoothquant {alpha} default-quantizer norm", "block": -1, "name": name,
                         "equal": torch.equal(a, b)})
        elif ".layers." in name:
            differ += int((a != b).sum())
            total += a.numel()
    probe = torch.randint(0, len(tok), (2, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        rows.append({"what": f"smoothquant {alpha} logits", "block": -1, "name": "whole model, held-out tokens",
                     "equal": torch.equal(kick_model(probe).logits, ref_model(probe).logits)})
    rows.append({"what": f"smoothquant {alpha} seconds", "block": -1, "name": "calibrate+smooth+quantize",
                 "kick": kick_seconds, "reference": ref_seconds, "ratio": kick_seconds / ref_seconds})
    rows.append({"what": f"smoothquant {alpha} scheme vs reference grid", "block": -1,
                 "name": "share of block weights that differ", "share": differ / total})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--blocks", type=int, default=2)
    p.add_argument("--nsamples", type=int, default=8)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--group", type=int, default=64)
    p.add_argument("--alpha", default="0.5,0.85")
    p.add_argument("--skip", choices=("awq", "smoothquant"), default=None)
    ns = p.parse_args(argv)
    torch.set_num_threads(common.THREADS)
    torch.manual_seed(0)
    ref = load_references()
    model, tok = load_model(ns.blocks)
    print(json.dumps({"machine": common.machine_info(), "blocks": ns.blocks, "nsamples": ns.nsamples,
                      "seqlen": ns.seqlen, "group": ns.group}))
    rows = []
    if ns.skip != "awq":
        tokens = torch.load(common.calibration_tokens(ns.nsamples, ns.seqlen), weights_only=True)["tokens"]
        rows += bench_awq(ref, model, tokens, ns.group)
    if ns.skip != "smoothquant":
        for alpha in (float(a) for a in ns.alpha.split(",")):
            rows += bench_smoothquant(ref, model, tok, ns.nsamples, ns.seqlen, alpha)
    bad = [r for r in rows if r.get("equal") is False]
    for r in rows:
        if r.get("equal") is not True:  # timings, shares, and whatever differs
            print(json.dumps(r, default=float))
    kinds = sorted({r["what"] for r in rows if "equal" in r})
    for kind in kinds:
        same = [r["equal"] for r in rows if r["what"] == kind]
        print(f"{kind}: {sum(same)}/{len(same)} bit-identical")
    checked = sum("equal" in r for r in rows)
    print(f"{checked - len(bad)}/{checked} comparisons bit-identical" + (f"; DIFFER: {[r['name'] for r in bad]}" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
