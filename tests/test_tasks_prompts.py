"""Exact prompt strings of the kick knowledge tasks, as lm-eval builds them from the task YAMLs."""

from pathlib import Path

import pytest

import kick_tasks

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def tasks():
    tm = kick_tasks.task_manager(include_defaults=False, metadata={"data_dir": str(FIXTURES)})
    return tm.load(
        ["kick_factoid_qa", "kick_factoid_qa_train", "kick_factoid_qa_dev", "kick_icr_qa_closed", "kick_icr_qa_open",
         "kickmmlu_elementary_mathematics"]
    )["tasks"]


def _prompt(task, index=0):
    doc = task.test_docs()[index]
    return task.fewshot_context(doc, task.config.num_fewshot or 0)


def test_factoid_prompt_and_splits(tasks):
    assert _prompt(tasks["kick_factoid_qa"]) == (
        "Please give answer to this question: Who wrote the novel 'Nineteen Eighty-Four'?\nThe answer is"
    )
    assert len(tasks["kick_factoid_qa"].test_docs()) == 3  # eval
    assert len(tasks["kick_factoid_qa_train"].test_docs()) == 3
    assert len(tasks["kick_factoid_qa_dev"].test_docs()) == 2
    assert tasks["kick_factoid_qa_train"].test_docs()[0]["question_id"] == "FreebaseQA-train-0"
    gen = tasks["kick_factoid_qa"].config.generation_kwargs
    assert gen["until"] == [] and gen["do_sample"] is False and gen["max_gen_toks"] == 32


def test_icr_prompts(tasks):
    closed, open_ = tasks["kick_icr_qa_closed"], tasks["kick_icr_qa_open"]
    assert [d["question_id"] for d in closed.test_docs()] == [d["question_id"] for d in open_.test_docs()]
    assert _prompt(closed, 1) == "Answer these questions:\n\nQ: Who wrote the play Hamlet?\nA:"
    assert _prompt(open_, 1) == (
        "Hamlet is a tragedy written by William Shakespeare.Shakespeare wrote Hamlet around 1600."
        "\n\nBased on these texts, answer these questions:\n\nQ: Who wrote the play Hamlet?\nA:"
    )
    assert open_.config.generation_kwargs["max_gen_toks"] == 32


def test_mmlu_prompt_is_hendrycks_five_shot(tasks):
    task = tasks["kickmmlu_elementary_mathematics"]
    expected = (
        "The following are multiple choice questions (with answers) about elementary mathematics.\n\n"
        "What is 2 + 2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer: B\n\n"
        "What is 10 / 2?\nA. 2\nB. 4\nC. 5\nD. 20\nAnswer: C\n\n"
        "Which number is prime?\nA. 4\nB. 6\nC. 7\nD. 9\nAnswer: C\n\n"
        "What is 3 * 3?\nA. 9\nB. 6\nC. 12\nD. 3\nAnswer: A\n\n"
        "What is 7 - 5?\nA. 1\nB. 3\nC. 12\nD. 2\nAnswer: D\n\n"
        "What is 5 + 5?\nA. 5\nB. 10\nC. 15\nD. 25\nAnswer:"
    )
    assert _prompt(task) == expected
    doc = task.test_docs()[0]
    requests = task.construct_requests(doc, _prompt(task))
    assert [r.args[1] for r in requests] == [" A", " B", " C", " D"]
    assert task.doc_to_target(doc) == 1


def test_generated_mmlu_yamls_are_up_to_date(tmp_path):
    """The committed kickmmlu_*.yaml files are exactly what _generate_configs.py writes."""
    import importlib.util

    folder = Path(kick_tasks.__file__).resolve().parents[1] / "task_yaml" / "mcr_qa"
    spec = importlib.util.spec_from_file_location("_kick_mmlu_generator", folder / "_generate_configs.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    generator.main(tmp_path)
    generated = {p.name: p.read_text() for p in tmp_path.glob("*.yaml")}
    committed = {p.name: p.read_text() for p in folder.glob("*.yaml")}
    assert len(generated) == 58
    assert generated == committed
