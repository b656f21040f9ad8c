"""MMLU (Hendrycks et al., ICLR 2021) for ``kick_mcr_qa``: the 57 subjects and their loader.

Local layout (the original Hendrycks release, headerless CSV
``question, A, B, C, D, answer-letter``)::

    <data dir>/mmlu/{dev,val,test}/<subject>_<split>.csv

Online: the Hugging Face dataset ``cais/mmlu`` (config = subject). Both give
docs in the ``cais/mmlu`` schema ``{"question", "subject", "choices": [4 str],
"answer": 0..3}`` under the splits ``dev`` / ``validation`` / ``test``.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from kick_models.data import DataSchemaError, resolve

HF_DATASET = "cais/mmlu"
LETTERS = ("A", "B", "C", "D")
#: local folder name -> split name (cais/mmlu naming)
SPLIT_FOLDERS = {"dev": "dev", "val": "validation", "test": "test"}

SUBJECTS = (
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge",
    "college_biology", "college_chemistry", "college_computer_science", "college_mathematics",
    "college_medicine", "college_physics", "computer_security", "conceptual_physics", "econometrics",
    "electrical_engineering", "elementary_mathematics", "formal_logic", "global_facts",
    "high_school_biology", "high_school_chemistry", "high_school_computer_science",
    "high_school_european_history", "high_school_geography", "high_school_government_and_politics",
    "high_school_macroeconomics", "high_school_mathematics", "high_school_microeconomics",
    "high_school_physics", "high_school_psychology", "high_school_statistics", "high_school_us_history",
    "high_school_world_history", "human_aging", "human_sexuality", "international_law", "jurisprudence",
    "logical_fallacies", "machine_learning", "management", "marketing", "medical_genetics",
    "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition", "philosophy", "prehistory",
    "professional_accounting", "professional_law", "professional_medicine", "professional_psychology",
    "public_relations", "security_studies", "sociology", "us_foreign_policy", "virology",
    "world_religions",
)


def check_subject(subject: str) -> str:
    if subject not in SUBJECTS:
        raise ValueError(f"MMLU has no subject {subject!r}; valid subjects: {', '.join(SUBJECTS)}")
    return subject


def description(subject: str) -> str:
    """Hendrycks' header line (underscores become spaces)."""
    return f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"


def read_csv(path: Path, subject: str) -> list[dict[str, Any]]:
    """One headerless Hendrycks CSV -> docs; DataSchemaError names the file and row on bad input."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        raise DataSchemaError(f"{path}: the file is empty")
    docs = []
    for i, row in enumerate(rows, start=1):
        if len(row) != 6:
            raise DataSchemaError(
                f"{path}: row {i} has {len(row)} columns; expected 6 (question, A, B, C, D, answer letter), no header"
            )
        answer = row[5].strip()
        if answer not in LETTERS:
            raise DataSchemaError(f"{path}: row {i}: answer column is {answer!r}; expected one of A, B, C, D")
        docs.append({"question": row[0], "subject": subject, "choices": row[1:5], "answer": LETTERS.index(answer)})
    return docs


def read_local(root: Path, subject: str) -> dict[str, list[dict[str, Any]]]:
    """``<root>`` is the ``mmlu`` folder; needs dev and test, reads val when present."""
    splits: dict[str, list[dict[str, Any]]] = {}
    for folder, split in SPLIT_FOLDERS.items():
        path = root / folder / f"{subject}_{folder}.csv"
        if path.is_file():
            splits[split] = read_csv(path, subject)
        elif folder != "val":
            raise DataSchemaError(
                f"{path} is missing: the MMLU folder {root} must hold dev/ and test/ with <subject>_<split>.csv files"
            )
    return splits


def download(subject: str) -> dict[str, list[dict[str, Any]]]:
    import datasets

    ds = datasets.load_dataset(HF_DATASET, subject)
    return {split: [dict(doc) for doc in ds[split]] for split in ("dev", "validation", "test") if split in ds}


def load_subject(subject: str, metadata: dict[str, Any] | None = None) -> dict[str, list[dict[str, Any]]]:
    """All splits of one subject: local CSVs, else the Hub, else DataNotFoundError."""
    check_subject(subject)
    return resolve(
        name=f"MMLU {subject}",
        relative="mmlu",
        load_local=lambda root: read_local(root, subject),
        load_online=lambda: download(subject),
        online_description=f"Hugging Face dataset {HF_DATASET} (config {subject})",
        metadata=metadata,
    )


def load(subject: str, **metadata: Any):
    """lm-eval ``custom_dataset`` entry point: ``DatasetDict`` with dev / (validation) / test."""
    import datasets

    return datasets.DatasetDict(
        {split: datasets.Dataset.from_list(docs) for split, docs in load_subject(subject, metadata).items()}
    )
