"""Checkpoints kick did not compress (issue 25): compressed-tensors W4A16 / FP8_DYNAMIC written by the
compressed-tensors library, and kick's own pruned export, evaluated with ``--model hf``; ``kick inspect``
labels them from what they hold and ``kick report --dense`` / ``kick compare`` score them against the named
dense run, KL divergence included."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from kick_analysis import compare as cmp
from kick_analysis import report as rep
from kick_models.checkpoint_info import inspect_checkpoint

FIXTURES = Path(__file__).parent / "fixtures"


def compressed_tensors_checkpoint(dense_dir: Path, out: Path, preset: str, group_size: int | None = None) -> Path:
    """Quantize the tiny model with compressed-tensors itself (min/max scales, as an observer would) and save it
    compressed, the way llm-compressor's oneshot + save_pretrained(save_compressed=True) does."""
    ct = pytest.importorskip("compressed_tensors")
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import QuantizationConfig, apply_quantization_config, preset_name_to_scheme
    from compressed_tensors.quantization.utils import calculate_qparams

    from tiny import load

    model, tok = load(dense_dir)
    scheme = preset_name_to_scheme(preset, targets=["Linear"])
    if group_size:
        scheme.weights.group_size = group_size
    apply_quantization_config(model, QuantizationConfig(config_groups={"group_0": scheme}, ignore=["lm_head"]))
    for module in model.modules():
        if hasattr(module, "weight_scale"):
            args = module.quantization_scheme.weights
            w = module.weight.data
            w = w.reshape(w.shape[0], -1, args.group_size) if args.group_size else w.unsqueeze(1)
            scale, zero = calculate_qparams(w.amin(-1), w.amax(-1), args)
            module.weight_scale.data.copy_(scale.reshape(module.weight_scale.shape))
            if hasattr(module, "weight_zero_point"):
                module.weight_zero_point.data.copy_(zero.reshape(module.weight_zero_point.shape))
    fmt = "pack-quantized" if scheme.weights.type == "int" else "float-quantized"
    compressor = ModelCompressor.from_pretrained_model(model, quantization_format=fmt)
    compressor.compress_model(model)
    model.save_pretrained(out)
    compressor.update_config(out)
    tok.save_pretrained(out)
    assert ct  # the library wrote it
    return out


def lm_eval_run(path: Path, out: Path, **metadata) -> Path:
    """A real ``lm_eval --model hf`` run of a knowledge task and the perplexity task, samples logged."""
    import lm_eval
    from lm_eval.loggers import EvaluationTracker

    import kick_tasks

    tm = kick_tasks.task_manager(include_defaults=False, metadata={
        "data_dir": str(FIXTURES), "ppl_seqlen": 64, "pretrained": str(path), **metadata})
    results = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={path},dtype=float32",
                                      tasks=["kick_factoid_qa", "kick_wikitext_ppl"], device="cpu", task_manager=tm,
                                      log_samples=True, limit=8, gen_kwargs="max_gen_toks=4")
    tracker = EvaluationTracker(output_path=str(out))
    tracker.save_results_aggregated(results=results, samples=results["samples"])
    for task, samples in results["samples"].items():
        tracker.save_results_samples(task_name=task, samples=samples)
    return out


@pytest.fixture(scope="module")
def external_runs(tiny_llama_dir, tmp_path_factory):
    from kick_models.api import prune
    from kick_models.export import save_compressed
    from tiny import load

    root = tmp_path_factory.mktemp("external")
    w4 = compressed_tensors_checkpoint(tiny_llama_dir, root / "ckpt_w4a16", "W4A16", group_size=32)
    fp8 = compressed_tensors_checkpoint(tiny_llama_dir, root / "ckpt_fp8", "FP8_DYNAMIC")
    model, tok = load(tiny_llama_dir)
    report = prune(model, tok, method="magnitude", sparsity=0.5, calibration=None, progress=False)
    pruned = save_compressed(model, tok, report, root / "ckpt_kick_magnitude50")
    ref = root / "reference"
    runs = {"dense": lm_eval_run(tiny_llama_dir, root / "runs" / "dense", kick_reference_out=str(ref))}
    for name, ckpt in (("w4a16", w4), ("fp8", fp8), ("pruned", pruned)):
        runs[name] = lm_eval_run(ckpt, root / "runs" / name, kick_reference=str(ref))
    return {"w4a16": w4, "fp8": fp8, "pruned": pruned}, runs


def test_kick_inspect_measures_what_the_weights_hold(external_runs, tiny_llama_dir):
    ckpts, _ = external_runs
    w4 = inspect_checkpoint(ckpts["w4a16"])
    assert w4["format"] == "compressed-tensors W4A16 int group 32 (pack-quantized)"
    # packed int4 + one float32 scale per 32 weights (+ the blocks' norms and weight_shape tensors)
    assert 4 + 32 / 32 <= w4["bits_per_weight"] < 4 + 32 / 32 + 0.2
    fp8 = inspect_checkpoint(ckpts["fp8"])
    assert fp8["format"].startswith("compressed-tensors W8A8 float per channel dynamic act")
    assert 8 < fp8["bits_per_weight"] < 8 + 32 / 64 + 0.1  # fp8 + a float32 scale per row (64 inputs at most)
    pruned = inspect_checkpoint(ckpts["pruned"])
    assert pruned["format"] == "none"
    # counted here independently: zeros in the decoder blocks' Linear weights of the saved file
    from safetensors.torch import load_file

    tensors = load_file(str(ckpts["pruned"] / "model.safetensors"))
    mats = [t for n, t in tensors.items() if ".layers." in n and n.endswith(".weight") and t.dim() == 2]
    assert pruned["sparsity"] == pytest.approx(sum(int((t == 0).sum()) for t in mats) / sum(t.numel() for t in mats))
    assert pruned["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert inspect_checkpoint(tiny_llama_dir)["sparsity"] == 0.0


def test_report_with_named_dense_labels_and_scores_every_checkpoint(external_runs, tmp_path, capsys):
    _, runs = external_runs
    out = tmp_path / "report"
    assert rep.main([str(runs["w4a16"]), str(runs["fp8"]), str(runs["pruned"]), "--dense", str(runs["dense"]),
                     "--out", str(out), "--no-plots", "--resamples", "50"]) == 0
    rows = list(csv.DictReader(open(out / "summary.csv", encoding="utf-8")))
    by_config = {}
    for r in rows:
        by_config.setdefault(r["config"], []).append(r)
    labels = set(by_config)
    assert "dense (--dense)" in labels
    w4 = next(c for c in labels if c.startswith("compressed-tensors W4A16 int group 32"))
    fp8 = next(c for c in labels if c.startswith("compressed-tensors W8A8 float"))
    pruned = next(c for c in labels if "% zeros" in c)
    assert "dense" not in w4 + fp8 + pruned  # never labelled dense because kick did not compress them
    for config in (w4, fp8, pruned):
        qa = next(r for r in by_config[config] if r["task"] == "kick_factoid_qa" and r["is_primary"] == "True")
        assert int(qa["n_paired"]) > 0 and qa["flips"] != ""  # paired with the named dense run
        kld = next(r for r in by_config[config] if r["metric"] == "kld_mean")
        assert float(kld["value"]) > 0
    assert by_config[w4][0]["kind"] == "quant" and float(by_config[w4][0]["effective_bits"]) < 5.2
    assert by_config[pruned][0]["kind"] == "prune"
    board = (out / "leaderboard.md").read_text()
    assert "KLD vs dense" in board and "same top" in board and "flips" in board


def test_compare_external_checkpoint_shows_divergence(external_runs, capsys):
    _, runs = external_runs
    assert cmp.main([str(runs["dense"]), str(runs["w4a16"]), "--resamples", "50"]) == 0
    text = capsys.readouterr().out
    assert "kld_mean" in text and "same_top" in text and "flips" in text


def test_a_kick_hf_run_is_labelled_from_its_checkpoint_not_dense(external_runs, tmp_path):
    """kick-hf (lm-eval's hf through kick's scoring) compresses nothing: outside a sweep's baseline config its run is
    labelled from what its checkpoint holds, exactly as a plain hf run (here the magnitude-50% checkpoint)."""
    import shutil

    from kick_analysis.results_io import compression_info, load_runs

    _, runs = external_runs
    copy = tmp_path / "kick_hf_run"
    shutil.copytree(runs["pruned"], copy)
    for path in copy.rglob("results_*.json"):
        results = json.loads(path.read_text())
        results["config"]["model"] = "kick-hf"
        path.write_text(json.dumps(results))
    (run,) = load_runs([copy])
    assert run.model == "kick-hf"
    info = compression_info(run)
    assert info["kind"] == "prune" and info["sparsity"] == pytest.approx(0.5, abs=0.01), info
