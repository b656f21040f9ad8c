"""Cut the data ``kick demo`` ships (kick_analysis/demo_data/) from a full data folder (default ../shared/data).

    python scripts/make_demo_data.py [--src ../shared/data] [--out kick_analysis/demo_data]

Exactly what the demo's default run needs, in the layout of a data folder (so the one resolver in
kick_models.data reads it like any other), each with its license and attribution beside it:

* freebaseqa/FreebaseQA-eval.json: the first 100 questions of the eval split (the demo scores
  ``--limit 100``; lm-eval takes the first N documents, so the questions are the same as with the full file);
* c4/c4_validation_2k.parquet: the first 200 of the 2,000 C4 validation documents (57 are longer than
  512 SmolLM2 tokens; the demo draws 32 calibration windows of 512 tokens from them). The file keeps the
  layout's name; MANIFEST.json and the run's provenance record say it is an excerpt of 200 documents.
  The windows are not the ones drawn from the full file (the sampling draws document indices over
  the number of documents);
* wikitext2/wiki.test.raw: the first 300,000 characters (whole lines) of the test file, ~70,000
  SmolLM2 tokens = 137 windows of 512 tokens (the demo scores the first 100; they are the same
  windows as with the full file, which is tokenized once and cut from the start).

MANIFEST.json records, per file, what it is an excerpt of, the source, the license and the sha256.
Deterministic: running it again on the same source gives byte-identical files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
N_QUESTIONS = 100
N_C4_DOCS = 200
WIKITEXT_CHARS = 300_000

LICENSES = {
    "freebaseqa": (
        "FreebaseQA",
        "CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/)",
        "Kelvin Jiang, Dekun Wu, Hui Jiang. FreebaseQA: A New Factoid QA Data Set Matching Trivia-Style "
        "Question-Answer Pairs with Freebase. NAACL 2019. https://github.com/kelvin-jiang/FreebaseQA",
        f"The first {N_QUESTIONS} questions of the eval split, unchanged (official v1.0 JSON schema). The project's "
        "copy was converted from the 2017 pre-release eval.tab of the FreebaseQA repository.",
    ),
    "c4": (
        "C4 (Colossal Clean Crawled Corpus), English, validation split",
        "ODC-BY 1.0 (https://opendatacommons.org/licenses/by/1-0/); the documents are also subject to the "
        "Common Crawl terms of use",
        "Raffel et al., Exploring the Limits of Transfer Learning with a Unified Text-to-Text Transformer, "
        "JMLR 2020; distributed by the Allen Institute for AI as allenai/c4 (https://huggingface.co/datasets/allenai/c4)",
        f"The first {N_C4_DOCS} of 2,000 documents of the C4 en validation split (columns text, url, timestamp), "
        "unchanged. The paper calibrates on the first TRAIN shard (en/c4-train.00000-of-01024.json.gz): this is a stand-in.",
    ),
    "wikitext2": (
        "WikiText-2 (raw), test split",
        "CC BY-SA 3.0 (https://creativecommons.org/licenses/by-sa/3.0/); this excerpt is shared under the same license",
        "Stephen Merity, Caiming Xiong, James Bradbury, Richard Socher. Pointer Sentinel Mixture Models. "
        "ICLR 2017. https://huggingface.co/datasets/Salesforce/wikitext (text from Wikipedia, CC BY-SA)",
        f"The first {WIKITEXT_CHARS:,} characters (whole lines) of wiki.test.raw, unchanged. The project's copy has "
        "none of the original's empty lines.",
    ),
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cut_freebaseqa(src: Path, out: Path) -> str:
    payload = json.loads((src / "freebaseqa" / "FreebaseQA-eval.json").read_text(encoding="utf-8"))
    total = len(payload["Questions"])
    payload["Questions"] = payload["Questions"][:N_QUESTIONS]
    target = out / "freebaseqa" / "FreebaseQA-eval.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(payload, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return f"kick demo's embedded excerpt: the first {N_QUESTIONS} of {total:,} FreebaseQA eval questions"


def cut_c4(src: Path, out: Path) -> str:
    import pyarrow.parquet as pq

    table = pq.read_table(src / "c4" / "c4_validation_2k.parquet")
    target = out / "c4" / "c4_validation_2k.parquet"
    target.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.slice(0, N_C4_DOCS), target, compression="zstd")
    return f"kick demo's embedded excerpt: the first {N_C4_DOCS} of {table.num_rows:,} C4 validation documents"


def cut_wikitext(src: Path, out: Path) -> str:
    text = (src / "wikitext2" / "wiki.test.raw").read_text(encoding="utf-8")
    cut = text.rfind("\n", 0, WIKITEXT_CHARS) + 1
    target = out / "wikitext2" / "wiki.test.raw"
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "w", encoding="utf-8", newline="") as f:
        f.write(text[:cut])
    return f"kick demo's embedded excerpt: the first {cut:,} of {len(text):,} characters of WikiText-2 raw test"


def write_license(folder: Path, key: str) -> None:
    name, license_, attribution, what = LICENSES[key]
    (folder / "LICENSE.md").write_text(
        f"# {name}: excerpt shipped with kick for `kick demo`\n\n"
        f"What: {what}\n\nLicense: {license_}\n\nAttribution: {attribution}\n\n"
        "Cut by scripts/make_demo_data.py from the project's data folder; see ../MANIFEST.json for the sha256.\n",
        encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--src", default=str(ROOT.parent / "shared" / "data"), help="full data folder (shared/data layout)")
    p.add_argument("--out", default=str(ROOT / "kick_analysis" / "demo_data"))
    args = p.parse_args(argv)
    src, out = Path(args.src), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for key, relative, cut in (("freebaseqa", "freebaseqa/FreebaseQA-eval.json", cut_freebaseqa),
                               ("c4", "c4/c4_validation_2k.parquet", cut_c4),
                               ("wikitext2", "wikitext2/wiki.test.raw", cut_wikitext)):
        excerpt = cut(src, out)
        write_license(out / key, key)
        files[relative] = {"excerpt": excerpt, "license": LICENSES[key][1].split(" (")[0],
                           "license_file": f"{key}/LICENSE.md", "sha256": sha256(out / relative)}
    (out / "MANIFEST.json").write_text(json.dumps({
        "what": "The data `kick demo` uses when no data directory is configured (KICK_DATA_DIR unset). "
                "Excerpts: never used by the full tasks (kick_factoid_qa etc. without a data folder still use "
                "the online sources or fail).",
        "made_by": "scripts/make_demo_data.py",
        "files": files,
    }, indent=2) + "\n", encoding="utf-8")
    total = sum((out / r).stat().st_size for r in files)
    print(f"wrote {len(files)} files ({total / 1e6:.2f} MB) to {out}")
    for r, f in files.items():
        print(f"  {r}: {f['excerpt']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
