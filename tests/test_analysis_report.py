"""kick report on hand-built lm-eval output folders (a sweep layout + a plain run + junk)."""

from __future__ import annotations

import base64
import csv
import json
import re
from pathlib import Path

import pytest

from kick_analysis import report as rep
from kick_analysis.results_io import compression_info, load_runs
from test_analysis_compare import gen_sample, mc_sample, write_run

N = 40


def _factoid(correct: set[int]) -> list[dict]:
    return [gen_sample(i, "Paris" if i in correct else "Rome", "Paris", metric="contains_em") for i in range(N)]


def _ppl_results(value: float) -> dict:
    return {"kick_wikitext_ppl": {"alias": "kick_wikitext_ppl", "token_perplexity,none": value,
                                  "token_perplexity_stderr,none": "N/A"}}


def _summary(method: str, sparsity: float | None = None, bpw: float | None = None, st: str = "unstructured") -> dict:
    cfg = {"method": method}
    if sparsity is not None:
        cfg.update(sparsity=sparsity, sparsity_type=st)
    return {"kick_compression": {"model_class": "x", "config": cfg, "measured_sparsity": sparsity or 0.01,
                                 "bits_per_weight": bpw, "compression_seconds": 1.5}}


@pytest.fixture()
def sweep_dir(tmp_path: Path) -> Path:
    root = tmp_path / "sweep"
    root.mkdir()
    (root / "sweep.json").write_text(json.dumps({"model": "tiny", "configs": []}))
    dense_ok = set(range(30))
    mcd = [mc_sample(i, [-1.0, -2.0], 0) for i in range(10)]
    configs = {
        "dense": ("hf", {"pretrained": "tiny"}, dense_ok, {}, 10.0),
        "magnitude-s50": ("kick-pruned", {"pretrained": "tiny", "method": "magnitude", "sparsity": 0.5},
                          set(range(5)), _summary("magnitude", 0.5), 40.0),       # loses 25: significant
        "wanda-s50": ("kick-pruned", {"pretrained": "tiny", "method": "wanda", "sparsity": 0.5},
                      set(range(27)) | {35}, _summary("wanda", 0.5), 12.0),
        "wanda-s30": ("kick-pruned", {"pretrained": "tiny", "method": "wanda", "sparsity": 0.3},
                      set(range(30)), _summary("wanda", 0.3), 10.5),
        "wanda-2of4": ("kick-pruned", {"pretrained": "tiny", "method": "wanda", "sparsity_type": "2:4"},
                       set(range(20)), _summary("wanda", 0.5, st="2:4"), 20.0),
        "gptq-w4-g128": ("kick-gptq", {"pretrained": "tiny", "method": "gptq", "wbits": 4, "groupsize": 128},
                         set(range(29)), _summary("gptq", None, bpw=4.25), 10.8),
    }
    for slug, (model, args, ok, extra, ppl) in configs.items():
        write_run(root / slug / "tiny", {"kick_factoid_qa": _factoid(ok), "kickmc": mcd}, model=model,
                  model_args=args, extra_config=extra, results_extra=_ppl_results(ppl),
                  output_types={"kickmc": "multiple_choice"})
    return root


def test_compression_info_reads_model_class_summary(sweep_dir):
    runs = {r.folder.parent.name: r for r in load_runs([sweep_dir])}
    assert compression_info(runs["dense"])["kind"] == "dense"
    w = compression_info(runs["wanda-2of4"])
    assert (w["kind"], w["method"], w["sparsity_type"], w["sparsity"]) == ("prune", "wanda", "2:4", 0.5)
    g = compression_info(runs["gptq-w4-g128"])
    assert (g["kind"], g["wbits"], g["bits_per_weight"], g["seconds"]) == ("quant", 4, 4.25, 1.5)
    assert rep.effective_bits(g) == 4.25
    assert rep.effective_bits(compression_info(runs["wanda-s30"])) == pytest.approx(16 * 0.7 + 1)


def test_report_outputs(sweep_dir, tmp_path, capsys):
    junk = tmp_path / "not_lm_eval"
    junk.mkdir()
    (junk / "notes.txt").write_text("hello")
    out = tmp_path / "report"
    assert rep.main([str(sweep_dir), str(junk), "--out", str(out), "--html", "--resamples", "300"]) == 0
    err = capsys.readouterr().err
    assert f"skipping {junk}" in err

    rows = list(csv.DictReader(open(out / "summary.csv")))
    # 6 configs x (contains_em + acc + acc_norm + token_perplexity)
    assert len(rows) == 6 * 4
    by = {(r["config"], r["task"], r["metric"]): r for r in rows}
    mag = by[("magnitude-s50", "kick_factoid_qa", "contains_em")]
    assert float(mag["value"]) == pytest.approx(5 / N) and float(mag["dense_value"]) == pytest.approx(30 / N)
    assert float(mag["pct_of_dense"]) == pytest.approx(100 * 5 / 30)
    assert float(mag["retention"]) == pytest.approx(5 / 30)
    assert mag["significant"] == "True" and float(mag["mcnemar_p"]) < 1e-6
    wan = by[("wanda-s50", "kick_factoid_qa", "contains_em")]
    assert float(wan["retention"]) == pytest.approx(27 / 30) and float(wan["gain"]) == pytest.approx(1 / 10)
    assert wan["significant"] == "False"
    assert float(by[("gptq-w4-g128", "kick_wikitext_ppl", "token_perplexity")]["ratio_to_dense"]) == pytest.approx(1.08)
    assert by[("dense", "kick_factoid_qa", "contains_em")]["pct_of_dense"] == "100.0"

    md = (out / "leaderboard.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| config") and "retention" in table[0] and "kick_wikitext_ppl token_perplexity" in table[0]
    assert [line.split("|")[1].strip() for line in table[1:]] == [
        "dense", "magnitude-s50", "wanda-s30", "wanda-s50", "wanda-2of4", "gptq-w4-g128"]
    mag_line = next(line for line in table if line.startswith("| magnitude-s50"))
    assert "\u2020" in mag_line and "16.7%" in mag_line  # retention 5/30, significant
    assert "\u2020" not in next(line for line in table if line.startswith("| wanda-s50 "))
    assert "x4.00" in mag_line  # perplexity x dense

    pngs = sorted(out.glob("*.png"))
    names = {p.name for p in pngs}
    assert {"score_vs_sparsity_kick_factoid_qa.png", "perplexity_vs_kick_factoid_qa.png",
            "quant_vs_prune_kick_factoid_qa.png", "retention_vs_sparsity_kick_factoid_qa.png",
            "mismatch_kick_factoid_qa.png"} <= names
    from PIL import Image

    for p in pngs:
        with Image.open(p) as im:
            im.verify()
    page = (out / "report.html").read_text()
    data = json.loads(re.search(r"<script id='kick-data' type='application/json'>(.*?)</script>", page, re.S).group(1))
    imgs = [p["src"].split("data:image/png;base64,", 1)[1] for p in data["plots"]]
    assert len(imgs) == len(pngs) and base64.b64decode(imgs[0])[:8] == b"\x89PNG\r\n\x1a\n"
    assert [c["label"] for c in data["configs"]][:2] == ["dense", "magnitude-s50"]


def test_report_errors_and_no_plots(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert rep.main([str(empty), "--out", str(tmp_path / "o")]) == 2
    assert "no lm-eval results" in capsys.readouterr().err
    # a plain run without a dense baseline still reports, without dense-relative columns
    write_run(tmp_path / "plain" / "m", {"qa": [gen_sample(0, "a", "a")]}, model="kick-pruned",
              model_args={"pretrained": "m", "method": "wanda", "sparsity": 0.5})
    assert rep.main([str(tmp_path / "plain"), "--out", str(tmp_path / "o"), "--no-plots"]) == 0
    captured = capsys.readouterr()
    assert "no dense (uncompressed) run of m" in captured.err
    assert not list((tmp_path / "o").glob("*.png"))
    assert "wanda 50%" in (tmp_path / "o" / "leaderboard.md").read_text()


def test_headline_tasks_unfold_groups_without_scores(tmp_path):
    """`kick` (no aggregate) shows its members; `kick_mcr_qa`-like groups with a score replace their subjects."""
    s = [mc_sample(i, [-1.0, -2.0], 0) for i in range(3)]
    path = write_run(tmp_path / "r", {"subj_a": s, "subj_b": s, "factoid": [gen_sample(0, "a", "a")]},
                     output_types={"subj_a": "multiple_choice", "subj_b": "multiple_choice"})
    data = json.loads(path.read_text())
    data["group_subtasks"] = {"kick": ["factoid", "mcr"], "mcr": ["subj_a", "subj_b"]}
    data["results"]["mcr"] = {"alias": "mcr", "acc,none": 1.0}
    data["results"]["kick"] = {"alias": "kick"}
    path.write_text(json.dumps(data))
    entries = rep.collect([tmp_path], n_resamples=50)
    assert sorted(rep.headline_tasks(entries)) == ["factoid", "mcr"]


def test_short_labels_name_the_grid_value():
    from kick_analysis.report import Entry, short_label

    def label(**info):
        return short_label(Entry(run=None, label="x", info=info, base=("m", "", "")))

    assert label(kind="dense", method="dense") == "dense"
    assert label(kind="prune", method="wanda", sparsity=0.3, sparsity_type="unstructured") == "30%"
    assert label(kind="prune", method="sparsegpt", sparsity=0.5, sparsity_type="2:4") == "2:4"
    assert label(kind="quant", method="gptq", wbits=3) == "w3"
