"""Unit tests of kick compare / kick_analysis.stats on hand-built lm-eval output folders."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest

from kick_analysis import compare as cmp
from kick_analysis.results_io import load_runs, load_single_run
from kick_analysis.stats import bootstrap_mean_ci, mcnemar_exact

DATE = "2026-01-01T00-00-00.000000"


def _h(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def gen_sample(doc_id: int, answer: str, target: str, prompt: str | None = None, metric: str = "exact_match",
               filter_key: str = "none", score: float | None = None) -> dict:
    """One lm-eval 0.4.13 generate_until sample line (same keys as --log_samples writes)."""
    prompt = prompt if prompt is not None else f"Question {doc_id}?\nAnswer:"
    doc = {"question": f"Question {doc_id}?", "answer": target}
    value = float(answer.strip().lower() == target.lower()) if score is None else score
    return {
        "doc_id": doc_id, "doc": doc, "target": target,
        "arguments": {"gen_args_0": {"arg_0": prompt, "arg_1": {"until": ["\n"]}}},
        "resps": [[answer]], "filtered_resps": [answer], "filter": filter_key, "metrics": [metric],
        "doc_hash": _h(json.dumps(doc, indent=2)), "prompt_hash": _h(prompt), "target_hash": _h(target),
        metric: value,
    }


def mc_sample(doc_id: int, lls: list[float], label: int, choices: list[str] | None = None) -> dict:
    """One multiple_choice sample: filtered_resps are [loglikelihood, is_greedy] string pairs."""
    choices = choices or [f" c{i}" for i in range(len(lls))]
    prompt = f"MC {doc_id}:"
    doc = {"q": doc_id, "label": label}
    pred = max(range(len(lls)), key=lls.__getitem__)
    norm = max(range(len(lls)), key=lambda i: lls[i] / len(choices[i]))
    return {
        "doc_id": doc_id, "doc": doc, "target": str(label),
        "arguments": {f"gen_args_{i}": {"arg_0": prompt, "arg_1": c} for i, c in enumerate(choices)},
        "resps": [[[str(ll), "False"]] for ll in lls], "filtered_resps": [[str(ll), "False"] for ll in lls],
        "filter": "none", "metrics": ["acc", "acc_norm"],
        "doc_hash": _h(json.dumps(doc, indent=2)), "prompt_hash": _h(prompt), "target_hash": _h(str(label)),
        "acc": float(pred == label), "acc_norm": float(norm == label),
    }


def write_run(folder: Path, tasks: dict[str, list[dict]], model: str = "hf", model_args: dict | None = None,
              output_types: dict[str, str] | None = None, log_samples: bool = True, extra_config: dict | None = None,
              results_extra: dict | None = None, date: str = DATE) -> Path:
    """Write an lm-eval-shaped output folder: results_<date>.json (+ samples_<task>_<date>.jsonl)."""
    folder.mkdir(parents=True, exist_ok=True)
    results, hib, configs = {}, {}, {}
    for task, samples in tasks.items():
        metrics = samples[0]["metrics"] if samples else []
        filt = samples[0]["filter"] if samples else "none"
        entry = {"alias": task}
        for m in metrics:
            vals = [s[m] for s in samples if s["filter"] == filt]
            entry[f"{m},{filt}"] = sum(vals) / len(vals)
            entry[f"{m}_stderr,{filt}"] = 0.0
        results[task] = entry
        hib[task] = {m: True for m in metrics}
        configs[task] = {"task": task, "output_type": (output_types or {}).get(task, "generate_until")}
        if log_samples:
            with open(folder / f"samples_{task}_{date}.jsonl", "w") as fh:
                for s in samples:
                    fh.write(json.dumps(s) + "\n")
    results.update(results_extra or {})
    config = {"model": model, "model_args": model_args or {"pretrained": "tiny"}, **(extra_config or {})}
    data = {"results": results, "group_subtasks": {}, "configs": configs, "higher_is_better": hib,
            "n-samples": {t: {"original": len(s), "effective": len(s)} for t, s in tasks.items()}, "config": config}
    path = folder / f"results_{date}.json"
    path.write_text(json.dumps(data))
    return path


# ----------------------------------------------------------------------------- stats


@pytest.mark.parametrize("b,c", [(0, 0), (0, 1), (1, 0), (3, 3), (2, 9), (10, 1), (0, 12), (25, 40), (123, 97),
                                 (500, 430)])
def test_mcnemar_exact_matches_scipy_binomtest(b, c):
    scipy_stats = pytest.importorskip("scipy.stats")
    expected = 1.0 if b + c == 0 else scipy_stats.binomtest(b, b + c, 0.5).pvalue
    assert mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-9, abs=1e-15)


def test_mcnemar_rejects_negative_counts():
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 3)


def test_bootstrap_is_seeded_and_brackets_the_mean():
    rng = random.Random(1)
    values = [rng.gauss(0.3, 1.0) for _ in range(80)]
    a = bootstrap_mean_ci(values, n_resamples=500, seed=7)
    b = bootstrap_mean_ci(values, n_resamples=500, seed=7)
    c = bootstrap_mean_ci(values, n_resamples=500, seed=8)
    assert (a.low, a.high) == (b.low, b.high)
    assert (a.low, a.high) != (c.low, c.high)
    assert a.low < a.estimate < a.high
    with pytest.raises(ValueError):
        bootstrap_mean_ci([])


def test_bootstrap_interval_coverage_is_about_95_percent():
    """Over 200 simulated paired datasets with a known mean difference, the 95% interval covers it ~95%."""
    rng = random.Random(0)
    true_diff = 0.1
    covered = 0
    for i in range(200):
        # paired binary outcomes: dense right w.p. 0.6, compressed right w.p. 0.7 -> E[c - d] = 0.1
        diffs = [float(rng.random() < 0.7) - float(rng.random() < 0.6) for _ in range(150)]
        ci = bootstrap_mean_ci(diffs, n_resamples=400, seed=i)
        covered += ci.low <= true_diff <= ci.high
    assert 0.88 <= covered / 200 <= 0.99


# ----------------------------------------------------------------------------- paired metrics


def _gen_pair(outcomes: list[tuple[int, int]]):
    """dense/compressed samples where each item is (dense correct, compressed correct)."""
    dense, comp = [], []
    for i, (d, c) in enumerate(outcomes):
        dense.append(gen_sample(i, "Paris" if d else "Rome", "Paris"))
        comp.append(gen_sample(i, " paris " if c else ("Rome" if not d else "Berlin"), "Paris"))
    return dense, comp


def test_retention_gain_agreement_mcnemar_on_known_pairs():
    # 6 kept, 4 lost, 1 gained, 9 both wrong
    outcomes = [(1, 1)] * 6 + [(1, 0)] * 4 + [(0, 1)] * 1 + [(0, 0)] * 9
    dense, comp = _gen_pair(outcomes)
    r = cmp.compare_samples("t", dense, comp, output_type="generate_until", n_resamples=300)
    assert r["metric"] == "exact_match" and r["kind"] == "binary"
    assert (r["kept"], r["lost"], r["gained"], r["dense_correct"]) == (6, 4, 1, 10)
    assert r["retention"] == pytest.approx(0.6)
    assert r["gain"] == pytest.approx(1 / 10)
    assert r["flips"] == pytest.approx(5 / 20)  # Dutta et al.: correctness changed, either direction
    assert r["dense_score"] == pytest.approx(0.5) and r["compressed_score"] == pytest.approx(0.35)
    assert r["difference"] == pytest.approx(-0.15)
    assert r["ci_low"] <= -0.15 <= r["ci_high"]
    # agreement: normalized answers equal for kept (Paris/" paris ") and for both-wrong (Rome/Rome) = 15 of 20
    assert r["agreement"] == pytest.approx(15 / 20)
    assert r["mcnemar_p"] == pytest.approx(mcnemar_exact(4, 1))
    assert r["significant"] is False


def test_significant_loss_is_flagged():
    outcomes = [(1, 0)] * 15 + [(1, 1)] * 5 + [(0, 0)] * 5
    dense, comp = _gen_pair(outcomes)
    r = cmp.compare_samples("t", dense, comp, n_resamples=300)
    assert r["mcnemar_p"] < 0.001 and r["significant"] is True
    assert r["ci_high"] < 0


def test_multiple_choice_agreement_uses_chosen_option():
    dense = [mc_sample(0, [-1.0, -2.0, -3.0], 0), mc_sample(1, [-1.0, -2.0, -3.0], 1),
             mc_sample(2, [-5.0, -2.0, -3.0], 1)]
    comp = [mc_sample(0, [-1.5, -2.5, -3.0], 0),   # same choice (0), right
            mc_sample(1, [-3.0, -2.0, -1.0], 1),   # different wrong choice (2 vs 0)
            mc_sample(2, [-1.0, -2.0, -3.0], 1)]   # flips to wrong
    r = cmp.compare_samples("mc", dense, comp, output_type="multiple_choice", n_resamples=200)
    assert r["metric"] == "acc"
    assert r["agreement"] == pytest.approx(1 / 3)
    assert (r["kept"], r["lost"], r["gained"]) == (1, 1, 0)
    assert r["retention"] == pytest.approx(0.5)


def test_acc_norm_agreement_normalizes_by_choice_length():
    choices = [" a", " much longer option"]
    d = mc_sample(0, [-2.0, -3.0], 1, choices)   # raw argmax 0, per-char argmax 1
    c = mc_sample(0, [-2.0, -30.0], 1, choices)  # raw argmax 0, per-char argmax 0
    assert cmp.chosen_answer(d, "multiple_choice", "acc") == cmp.chosen_answer(c, "multiple_choice", "acc")
    assert cmp.chosen_answer(d, "multiple_choice", "acc_norm") != cmp.chosen_answer(c, "multiple_choice", "acc_norm")


def test_continuous_scores_get_difference_and_ci_only():
    dense = [gen_sample(i, "x", "y", metric="score", score=float(s)) for i, s in enumerate([7, 8, 6, 9, 7, 8])]
    comp = [gen_sample(i, "x", "y", metric="score", score=float(s)) for i, s in enumerate([5, 6, 6, 7, 5, 6])]
    r = cmp.compare_samples("judged", dense, comp, n_resamples=500)
    assert r["kind"] == "continuous" and r["metric"] == "score"
    assert r["difference"] == pytest.approx(-10 / 6)
    assert "mcnemar_p" not in r and "retention" not in r
    assert r["ci_high"] < 0 and r["significant"] is True


def test_primary_metric_rule_and_override():
    s = [gen_sample(0, "a", "a")]
    s[0]["metrics"] = ["f1", "exact_match"]
    s[0]["f1"] = 0.5
    assert cmp.primary_metric("anything", s) == "exact_match"
    assert cmp.primary_metric("anything", s, override={"*": "f1"}) == "f1"
    assert cmp.primary_metric("anything", s, override={"anything": "f1"}) == "f1"
    with pytest.raises(cmp.CompareError, match="not in its samples"):
        cmp.primary_metric("anything", s, override={"*": "rouge1"})
    assert cmp.parse_metric_overrides(["acc", "t1=f1,t2=em"]) == {"*": "acc", "t1": "f1", "t2": "em"}


# ----------------------------------------------------------------------------- mismatches & folders


def test_document_mismatch_refused_unless_intersection():
    dense, comp = _gen_pair([(1, 1)] * 10)
    with pytest.raises(cmp.CompareError, match=r"7 documents match .* 10 in the dense run and 7"):
        cmp.compare_samples("t", dense, comp[:7])
    with pytest.warns(UserWarning, match="Comparing the 7 matching"):
        r = cmp.compare_samples("t", dense, comp[:7], use_intersection=True, n_resamples=100)
    assert r["n_matched"] == 7
    # a different prompt (e.g. other few-shot examples) is a different document
    other = [gen_sample(i, "Paris", "Paris", prompt=f"Q: Question {i}?\nA:") for i in range(10)]
    with pytest.raises(cmp.CompareError, match="0 documents match"):
        cmp.compare_samples("t", dense, other, use_intersection=True)


def test_compare_cli_end_to_end_on_folders(tmp_path, capsys):
    dense, comp = _gen_pair([(1, 1)] * 5 + [(1, 0)] * 3 + [(0, 0)] * 2)
    mcd = [mc_sample(i, [-1.0, -2.0], 0) for i in range(4)]
    mcc = [mc_sample(i, [-1.0, -2.0] if i % 2 else [-2.0, -1.0], 0) for i in range(4)]
    write_run(tmp_path / "dense" / "m", {"qa": dense, "mc": mcd}, output_types={"mc": "multiple_choice"})
    write_run(tmp_path / "comp" / "m", {"qa": comp, "mc": mcc}, model="kick-pruned",
              model_args={"pretrained": "tiny", "method": "wanda", "sparsity": 0.5},
              output_types={"mc": "multiple_choice"})
    out = tmp_path / "cmp.json"
    assert cmp.main([str(tmp_path / "dense"), str(tmp_path / "comp"), "--output", str(out), "--resamples", "200"]) == 0
    text = capsys.readouterr().out
    assert "retention" in text and "McNemar p" in text
    report = json.loads(out.read_text())
    assert report["tasks"]["qa"]["retention"] == pytest.approx(5 / 8)
    assert report["tasks"]["mc"]["retention"] == pytest.approx(0.5)
    assert report["tasks"]["mc"]["agreement"] == pytest.approx(0.5)
    # --metric override reaches the comparison
    assert cmp.main([str(tmp_path / "dense"), str(tmp_path / "comp"), "--tasks", "mc", "--metric", "mc=acc_norm",
                     "--output", str(out), "--resamples", "50"]) == 0
    assert json.loads(out.read_text())["tasks"]["mc"]["metric"] == "acc_norm"


def test_compare_cli_bad_inputs(tmp_path, capsys):
    dense, comp = _gen_pair([(1, 1)] * 4)
    write_run(tmp_path / "d", {"qa": dense})
    write_run(tmp_path / "nolog", {"qa": comp}, log_samples=False)
    write_run(tmp_path / "other", {"other_task": comp})
    write_run(tmp_path / "short", {"qa": comp[:2]})
    (tmp_path / "empty").mkdir()

    def err(*args: str) -> str:
        assert cmp.main([str(a) for a in args]) == 2
        return capsys.readouterr().err

    assert "--log_samples" in err(tmp_path / "d", tmp_path / "nolog")
    assert "share no task" in err(tmp_path / "d", tmp_path / "other")
    e = err(tmp_path / "d", tmp_path / "short")
    assert "2 documents match" in e and "--use-intersection" in e
    assert "no lm-eval results" in err(tmp_path / "d", tmp_path / "empty")
    assert "is not in the compressed run" in err(tmp_path / "d", tmp_path / "short", "--tasks", "nope")
    assert "different runs" in err(tmp_path, tmp_path / "d")


def test_runs_with_different_model_args_in_one_folder_stay_separate(tmp_path):
    dense, comp = _gen_pair([(1, 1)] * 3)
    write_run(tmp_path / "m", {"qa": dense}, model="kick-pruned", model_args={"pretrained": "x", "sparsity": 0.3},
              date="2026-01-01T00-00-00.1")
    write_run(tmp_path / "m", {"qa": comp}, model="kick-pruned", model_args={"pretrained": "x", "sparsity": 0.5},
              date="2026-01-01T00-00-00.2")
    write_run(tmp_path / "m", {"qa2": comp}, model="kick-pruned", model_args={"pretrained": "x", "sparsity": 0.5},
              date="2026-01-01T00-00-00.3")
    runs = load_runs([tmp_path])
    assert len(runs) == 2
    merged = [r for r in runs if r.model_args["sparsity"] == 0.5][0]
    assert merged.tasks == ["qa", "qa2"] and set(merged.samples_files) == {"qa", "qa2"}
    with pytest.raises(ValueError, match="2 different runs"):
        load_single_run(tmp_path)


def test_group_rows_pool_their_subtasks(tmp_path):
    """kick_mcr_qa-style groups: a pooled row over all subtasks (= size-weighted group score)."""
    d1 = [mc_sample(i, [-1.0, -2.0], 0) for i in range(6)]                     # all right
    c1 = [mc_sample(i, [-1.0, -2.0] if i < 3 else [-2.0, -1.0], 0) for i in range(6)]  # 3 lost
    d2 = [mc_sample(i, [-2.0, -1.0], 0) for i in range(4)]                     # all wrong
    c2 = [mc_sample(i, [-1.0, -2.0] if i == 0 else [-2.0, -1.0], 0) for i in range(4)]  # 1 gained
    for name, a, b in (("d", d1, d2), ("c", c1, c2)):
        path = write_run(tmp_path / name, {"sub_a": a, "sub_b": b},
                         output_types={"sub_a": "multiple_choice", "sub_b": "multiple_choice"})
        data = json.loads(path.read_text())
        data["group_subtasks"] = {"grp": ["sub_a", "sub_b"]}
        data["results"]["grp"] = {"alias": "grp", "acc,none": 0.0}
        path.write_text(json.dumps(data))
    report = cmp.compare_runs(load_single_run(tmp_path / "d"), load_single_run(tmp_path / "c"), n_resamples=200)
    assert set(report["tasks"]) == {"sub_a", "sub_b"}  # the group itself has no samples
    g = report["groups"]["grp"]
    assert g["n_matched"] == 10 and (g["kept"], g["lost"], g["gained"]) == (3, 3, 1)
    assert g["retention"] == pytest.approx(0.5) and g["subtasks"] == ["sub_a", "sub_b"]
    assert g["dense_score"] == pytest.approx(0.6) and g["compressed_score"] == pytest.approx(0.4)
