"""Metric and task names across lm-eval 0.4 / 0.5 and kick releases (kick_tasks.names, kick_analysis.results_io).

* every metric a kick task YAML declares is either unknown to the installed lm-eval's metric registry or one of
  the few lm-eval metrics kick uses as lm-eval means them (run on all three CI stacks: a future lm-eval that
  registers one of kick's names is caught here, before a user's run stops while building the tasks);
* results written before the ``f1`` -> ``token_f1`` rename (the committed studies) read as ``token_f1``;
* lm-eval 0.5's layout (``<group>::<task>``, per-repeat ``filtered_resps``) reads as lm-eval 0.4's.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from kick_analysis import compare
from kick_analysis.results_io import load_samples, load_single_run
from kick_tasks.names import canonical_metric, canonical_task, samples_task

ROOT = Path(__file__).resolve().parents[1]
STUDY_RUN = ROOT / "docs" / "studies" / "sweep_smollm2" / "runs" / "wanda-s50"
#: lm-eval metrics kick declares on purpose, with lm-eval's meaning: name -> the output type kick uses it with.
LM_EVAL_METRICS_KICK_USES = {"acc": "multiple_choice", "exact_match": "generate_until"}


class _Loader(yaml.SafeLoader):
    pass


_Loader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))


def _task_configs() -> dict[str, dict]:
    """Every kick task config (``include:`` resolved one level, as the kick YAMLs use it)."""
    configs = {}
    for path in sorted((ROOT / "task_yaml").rglob("*.yaml")) + sorted((ROOT / "task_yaml").rglob("*_yaml")):
        cfg = yaml.load(path.read_text(), Loader=_Loader) or {}
        if "include" in cfg:
            base = yaml.load((path.parent / cfg["include"]).read_text(), Loader=_Loader)
            cfg = {**base, **cfg}
        if "task" in cfg and isinstance(cfg["task"], str) and "metric_list" in cfg:
            configs[cfg["task"]] = cfg
    return configs


def _registered_metrics() -> dict[str, set[str] | None]:
    """lm-eval's registered metric names -> their output types (None where the registry records none: 0.4)."""
    import lm_eval.api.metrics  # noqa: F401  (registers the built-in metrics)
    from lm_eval.api import registry

    reg = getattr(registry, "metric_registry", None)  # lm-eval >= 0.4.10 (0.5: Metric objects with output types)
    if reg is None:
        return {name: None for name in registry.METRIC_REGISTRY}
    out = {}
    for name in list(reg.keys()):
        types = getattr(reg.get(name), "output_type", None)
        out[name] = set(types) if types is not None else None
    return out


def test_no_kick_metric_collides_with_a_registered_lm_eval_metric():
    configs = _task_configs()
    assert {"kick_factoid_qa", "kick_icr_qa_closed", "kick_wikitext_ppl", "kick_mt_bench"} <= set(configs)
    registered = _registered_metrics()
    assert "f1" in registered and "acc" in registered  # the registry really was read
    collisions = []
    for task, cfg in configs.items():
        for item in cfg["metric_list"]:
            name, output_type = item["metric"], cfg["output_type"]
            if name not in registered:
                continue
            types = registered[name]
            if LM_EVAL_METRICS_KICK_USES.get(name) != output_type or (types is not None and output_type not in types):
                collisions.append((task, name, output_type, types))
    assert not collisions, collisions
    declared = {item["metric"] for cfg in configs.values() for item in cfg["metric_list"]}
    assert "token_f1" in declared and "f1" not in declared


def test_renamed_metrics_and_qualified_tasks_map_to_current_names():
    assert canonical_metric("kick_factoid_qa", "f1") == "token_f1"
    assert canonical_metric("kick_icr_qa_open", "f1") == "token_f1"
    assert canonical_metric("squadv2", "f1") == "f1"  # lm-eval's own f1 of other tasks stays
    assert canonical_metric("kick_factoid_qa", "exact_match") == "exact_match"
    assert canonical_task("kick_summarization::kicksum_small") == "kicksum_small"
    assert canonical_task("kick_factoid_qa") == "kick_factoid_qa"
    assert samples_task("samples_kick_mcr_qa::kickmmlu_anatomy_2026-12-06T17-19-25.698103.jsonl") == "kickmmlu_anatomy"
    assert samples_task("results_x.json") is None


def test_results_written_before_the_rename_read_as_token_f1():
    raw = json.loads(next(STUDY_RUN.rglob("results_*.json")).read_text())["results"]["kick_factoid_qa"]
    assert "f1,none" in raw  # the committed study predates the rename
    run = load_single_run(STUDY_RUN)
    values = run.metric_values("kick_factoid_qa")
    assert values[("token_f1", "none")] == raw["f1,none"] and ("f1", "none") not in values
    assert run.higher_is_better["kick_factoid_qa"]["token_f1"] is True
    samples = load_samples(run.samples_files["kick_factoid_qa"])
    assert "token_f1" in samples[0]["metrics"] and "f1" not in samples[0]
    assert compare.primary_metric("kick_factoid_qa", samples, override={"*": "f1"}) == "token_f1"


def _as_lm_eval_05(src: Path, dst: Path, group: str) -> None:
    """Rewrite a 0.4 results folder into lm-eval 0.5's layout: every task a subtask of ``group``
    (``group::task`` keys and samples names), ``filtered_resps`` one list of repeats per request."""
    dst.mkdir(parents=True)
    for path in src.iterdir():
        if path.name.startswith("results_"):
            data = json.loads(path.read_text())
            for key in ("results", "configs", "higher_is_better", "n-samples", "versions", "n-shot"):
                data[key] = {f"{group}::{t}": v for t, v in data.get(key, {}).items()}
            data["group_subtasks"] = {group: list(data["results"])}
            (dst / path.name).write_text(json.dumps(data))
        elif path.name.startswith("samples_"):
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            for row in rows:
                row["filtered_resps"] = [[r] for r in row["filtered_resps"]]
            (dst / path.name.replace("samples_", f"samples_{group}::", 1)).write_text(
                "".join(json.dumps(r) + "\n" for r in rows))


def test_lm_eval_05_layout_reads_as_lm_eval_04(tmp_path):
    folder = next(p.parent for p in STUDY_RUN.rglob("results_*.json"))
    shutil.copytree(folder, tmp_path / "v04")
    _as_lm_eval_05(folder, tmp_path / "v05", "kick_study")
    old, new = load_single_run(tmp_path / "v04"), load_single_run(tmp_path / "v05")
    assert old.tasks == ["kick_factoid_qa", "kick_wikitext_ppl"]
    assert new.tasks == old.tasks and new.group_subtasks == {"kick_study": old.tasks}
    for task in old.tasks:
        assert new.metric_values(task) == old.metric_values(task)
        assert new.n_samples[task] == old.n_samples[task] and new.task_configs[task] == old.task_configs[task]
    assert set(new.samples_files) == {"kick_factoid_qa"}
    assert load_samples(new.samples_files["kick_factoid_qa"]) == load_samples(old.samples_files["kick_factoid_qa"])


@pytest.mark.parametrize("resps,expected", [
    ([["Paris"]], ["Paris"]),                                  # 0.5 generate_until -> 0.4
    ([[["-1.5", "False"]], [["-2.0", "True"]]], [["-1.5", "False"], ["-2.0", "True"]]),  # 0.5 multiple choice
    (["Paris"], ["Paris"]),                                    # already 0.4
    ([["-1.5", "False"], ["-2.0", "True"]], [["-1.5", "False"], ["-2.0", "True"]]),
])
def test_samples_responses_one_per_request(tmp_path, resps, expected):
    path = tmp_path / "samples_kick_factoid_qa_2026-12-06T17-19-25.698103.jsonl"
    path.write_text(json.dumps({"doc_id": 0, "filtered_resps": resps, "filter": "none", "metrics": ["f1"], "f1": 0.5}) + "\n")
    row = load_samples(path)[0]
    assert row["filtered_resps"] == expected and row["token_f1"] == 0.5 and row["metrics"] == ["token_f1"]
