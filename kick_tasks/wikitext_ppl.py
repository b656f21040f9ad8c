"""WikiText-2 test perplexity in the SparseGPT / Wanda convention, inside lm-eval.

The convention (SparseGPT ``datautils.get_wikitext2`` + ``llama_eval``)::

    text    = "\\n\\n".join(wikitext-2-raw-v1 test rows)     # tokenized ONCE
    windows = tokens[i*L:(i+1)*L] for i < ntokens // L        # non-overlapping, tail dropped
    ppl     = exp(mean NLL of every token of every window but its first)

lm-eval's ``loglikelihood_rolling`` re-tokenizes each document and slides its
own windows, so it cannot reproduce that. Here the windows are cut with the
model's own tokenizer when the data set is built (:func:`build_windows`): one
doc per window, a ``loglikelihood`` request whose context is the window's
first token(s) and whose continuation is the rest, both as decoded text. HFLM
encodes ``context + continuation`` as one string and splits it after the
context tokens, so when the decoded window re-tokenizes to the same ids
(reported per run as ``tokenization_exact``) the model sees exactly the
SparseGPT window and scores exactly the SparseGPT tokens. ``token_perplexity``
is ``exp(-sum loglik / sum scored tokens)`` over windows.

The tokenizer is loaded from the task metadata, which the ``lm_eval`` CLI and
``simple_evaluate`` fill with the ``--model_args`` (``pretrained``,
``tokenizer``, ``gguf_file``, ``revision``, ``trust_remote_code``,
``add_bos_token``, ``max_length``). Window length: metadata ``ppl_seqlen`` (not ``seqlen``: lm-eval copies model args such as the calibration ``seqlen`` into task metadata)
(default 2048), capped at the model's maximum length. Metadata ``ppl_windows``: score only the first N windows
(default: all; ``kick demo`` uses it to keep perplexity's share of a CPU run small while ``--limit`` sets the
questions of the other tasks).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from kick_models.data import DataSchemaError, resolve
from kick_tasks import divergence
from kick_tasks.divergence import token_sha256

log = logging.getLogger(__name__)

HF_DATASET = "Salesforce/wikitext"
HF_CONFIG = "wikitext-2-raw-v1"
DEFAULT_SEQLEN = 2048
JOIN = "\n\n"


# ------------------------------------------------------------------ text


def read_raw(path: Path) -> list[str]:
    """``wiki.test.raw`` -> rows as in the Hub dataset (each line with its newline; blank lines as "")."""
    text = Path(path).read_text(encoding="utf-8")
    if not text.strip():
        raise DataSchemaError(f"{path}: the file is empty")
    return [line if line.strip() else "" for line in text.splitlines(keepends=True)]


def download_rows() -> list[str]:
    import datasets

    return list(datasets.load_dataset(HF_DATASET, HF_CONFIG, split="test")["text"])


def missing_empty_lines(path: Path) -> str | None:
    """Why a local ``wiki.test.raw`` is a stand-in (it lacks the original's empty lines), else None."""
    with open(path, encoding="utf-8") as f:
        if any(not line.strip() for line in f):
            return None
    return (f"{Path(path).name} has none of the original's empty lines, so the joined text and the windows differ "
            f"slightly from {HF_DATASET} {HF_CONFIG} (the paper's source)")


def load_rows(metadata: dict[str, Any] | None = None) -> list[str]:
    """WikiText-2 raw test rows: local ``wikitext2/wiki.test.raw``, else the Hub, else DataNotFoundError."""
    return resolve(
        name="WikiText-2 (raw) test",
        relative="wikitext2/wiki.test.raw",
        load_local=read_raw,
        load_online=download_rows,
        online_description=f"Hugging Face dataset {HF_DATASET} (config {HF_CONFIG}, split test)",
        metadata=metadata,
        local_stand_in=missing_empty_lines,
    )


def join_rows(rows: list[str]) -> str:
    return JOIN.join(rows)


# ------------------------------------------------------------------ tokenizer from the model args


def _as_bool(value: Any) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("1", "true", "yes")


def tokenizer_from_metadata(metadata: dict[str, Any]):
    """The tokenizer HFLM would build from the same ``--model_args`` (mirrors ``HFLM._create_tokenizer``)."""
    from transformers import AutoTokenizer

    source = metadata.get("tokenizer") or metadata.get("pretrained")
    if not isinstance(source, str) or not source:
        raise ValueError(
            "kick_wikitext_ppl cuts token windows with the model's tokenizer, but the task metadata names no "
            "model. Run it through the lm_eval CLI or simple_evaluate(model_args=...) (model args are passed on "
            "automatically), or pass metadata={'pretrained': <model or tokenizer path>} to the TaskManager."
        )
    kwargs: dict[str, Any] = {
        "revision": str(metadata.get("revision") or "main"),
        "trust_remote_code": bool(_as_bool(metadata.get("trust_remote_code"))),
    }
    if not metadata.get("tokenizer") and metadata.get("gguf_file"):
        kwargs["gguf_file"] = metadata["gguf_file"]
    else:
        use_fast = _as_bool(metadata.get("use_fast_tokenizer"))
        kwargs["use_fast"] = True if use_fast is None else use_fast
    if _as_bool(metadata.get("add_bos_token")) is not None:
        kwargs["add_bos_token"] = _as_bool(metadata["add_bos_token"])
    if metadata.get("subfolder"):
        kwargs["subfolder"] = metadata["subfolder"]
    return AutoTokenizer.from_pretrained(source, **kwargs)


def _hflm_max_length(config, tokenizer=None, *, default: int) -> int:
    """``HFLM.max_length``'s rule in lm-eval < 0.4.13 and 0.5 (no ``resolve_max_length`` there): config, tokenizer, default."""
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        if getattr(config, attr, None) is not None:
            return int(getattr(config, attr))
    length = getattr(tokenizer, "model_max_length", None)
    return default if length is None or length == 1000000000000000019884624838656 else int(length)


def model_max_length(metadata: dict[str, Any], tokenizer) -> int:
    """HFLM's ``max_length``: the ``max_length`` model arg, else the model config, else 2048."""
    if metadata.get("max_length"):
        return int(metadata["max_length"])
    try:
        from lm_eval.models.utils import resolve_max_length
    except ImportError:  # lm-eval < 0.4.13, 0.5
        resolve_max_length = _hflm_max_length
    from transformers import AutoConfig

    config = None
    source = metadata.get("pretrained")
    if isinstance(source, str):
        kwargs: dict[str, Any] = {"revision": str(metadata.get("revision") or "main"),
                                  "trust_remote_code": bool(_as_bool(metadata.get("trust_remote_code")))}
        if metadata.get("gguf_file"):
            kwargs["gguf_file"] = metadata["gguf_file"]
        try:
            config = AutoConfig.from_pretrained(source, **kwargs)
        except Exception as exc:  # e.g. a tokenizer-only folder: fall back like HFLM does
            log.warning("kick_wikitext_ppl: could not read the model config of %s (%s)", source, exc)
    return int(resolve_max_length(config, tokenizer, default=DEFAULT_SEQLEN))


# ------------------------------------------------------------------ windows


def encoder(tokenizer, add_bos_token: bool | None = None):
    """``str -> ids`` exactly as ``HFLM.tok_encode`` calls the tokenizer."""
    kwargs = {} if add_bos_token is None else {"add_special_tokens": add_bos_token}
    return lambda text: tokenizer.encode(text, **kwargs)


def build_windows(text: str, tokenizer, seqlen: int, add_bos_token: bool | None = None) -> list[dict[str, Any]]:
    """Cut ``text`` into SparseGPT windows; one doc per window.

    The context is the window's first token, extended (rarely) until its text
    does not end in whitespace, because HFLM moves trailing context whitespace
    into the continuation. ``n_tokens`` is the number of tokens HFLM will score
    for the doc, computed with HFLM's own split rule.
    """
    if seqlen < 2:
        raise ValueError(f"seqlen must be at least 2, got {seqlen}")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    n_windows = len(ids) // seqlen
    if n_windows == 0:
        raise DataSchemaError(f"the text has {len(ids)} tokens, fewer than one window of {seqlen}")
    encode = encoder(tokenizer, add_bos_token)

    def decode(part: list[int]) -> str:
        return tokenizer.decode(part, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    prefix = encode("")  # what the tokenizer puts in front of every encoded string (e.g. BOS)
    docs = []
    for i in range(n_windows):
        window = ids[i * seqlen:(i + 1) * seqlen]
        k = 1
        while k < seqlen - 1 and (not decode(window[:k]).strip() or decode(window[:k])[-1].isspace()):
            k += 1
        context, continuation = decode(window[:k]), decode(window[k:])
        whole_enc, context_enc = encode(context + continuation), encode(context)
        docs.append({
            "window": i,
            "context_tokens": k,
            "context": context,
            "continuation": continuation,
            "n_tokens": len(whole_enc) - len(context_enc),
            "tokenization_exact": whole_enc == prefix + window and context_enc == prefix + window[:k],
            "window_sha256": token_sha256(window),
        })
    return docs


def load(**metadata: Any):
    """lm-eval ``custom_dataset`` entry point: ``{"test": one doc per window}``."""
    import datasets

    rows = load_rows(metadata)
    start = time.perf_counter()
    tokenizer = tokenizer_from_metadata(metadata)
    max_length = model_max_length(metadata, tokenizer)
    seqlen = min(int(metadata.get("ppl_seqlen") or DEFAULT_SEQLEN), max_length)
    docs = build_windows(join_rows(rows), tokenizer, seqlen, _as_bool(metadata.get("add_bos_token")))
    windows = metadata.get("ppl_windows")
    if windows is not None:
        if isinstance(windows, bool) or not str(windows).isdigit() or int(windows) < 1:
            raise ValueError(f"ppl_windows={windows!r}: give a whole number of windows >= 1 (or leave it out: all).")
        docs = docs[:int(windows)]
    exact = sum(d["tokenization_exact"] for d in docs)
    log.info(
        "kick_wikitext_ppl: %d windows of %d tokens (%d re-tokenize exactly) in %.1fs",
        len(docs), seqlen, exact, time.perf_counter() - start,
    )
    spec = divergence_spec(metadata, docs, tokenizer, seqlen)
    for doc in docs:
        doc["seqlen"] = seqlen
        doc[DIVERGENCE_FIELD] = spec
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})


DIVERGENCE_FIELD = "kick_divergence"
#: task metadata keys of the divergence measurement (see kick_tasks.divergence)
REFERENCE_OUT, REFERENCE_IN = "kick_reference_out", "kick_reference"


def divergence_spec(metadata: dict[str, Any], docs: list[dict[str, Any]], tokenizer, seqlen: int) -> str:
    """The doc field that turns the per-token capture on ("" = off); a compared run's windows are checked here,
    before any window is scored."""
    out, ref = metadata.get(REFERENCE_OUT), metadata.get(REFERENCE_IN)
    if not out and not ref:
        return ""
    if out and ref:
        raise ValueError(f"kick_wikitext_ppl: give either {REFERENCE_OUT} (write the dense reference) or "
                         f"{REFERENCE_IN} (compare with it), not both")
    tokenizer_name = str(getattr(tokenizer, "name_or_path", "") or "")
    spec: dict[str, Any] = {"mode": "write" if out else "compare", "path": str(Path(out or ref).resolve()),
                            "seqlen": seqlen, "n_windows": len(docs), "tokenizer": tokenizer_name,
                            "tokenizer_vocab_size": len(tokenizer)}
    if out:
        for key in ("budget_mb", "topk", "form"):
            if metadata.get(f"kick_reference_{key}") is not None:
                spec[key] = metadata[f"kick_reference_{key}"]
        if spec.get("form") not in (None, "full", "topk"):
            raise ValueError(f"kick_reference_form must be 'full' or 'topk', got {spec['form']!r}")
    else:
        divergence.Reference(ref).check_windows(seqlen=seqlen, window_sha256=[d["window_sha256"] for d in docs],
                                                tokenizer=tokenizer_name, vocab_size=len(tokenizer))
    from kick_tasks import divergence_hook

    divergence_hook.install()
    return json.dumps(spec, sort_keys=True)


def doc_to_text(doc: dict[str, Any]) -> str:
    return doc["context"]


def doc_to_target(doc: dict[str, Any]) -> str:
    return doc["continuation"]


def process_results(doc: dict[str, Any], results: list) -> dict[str, Any]:
    """``results[0]`` is ``(loglikelihood, is_greedy)`` of the continuation; with a dense reference to compare
    with, every divergence metric gets this window's record (its arrays are aggregated over all windows)."""
    loglikelihood = results[0][0]
    out: dict[str, Any] = {
        "token_perplexity": (loglikelihood, doc["n_tokens"]),
        "tokenization_exact": float(doc["tokenization_exact"]),
    }
    spec = doc.get(DIVERGENCE_FIELD)
    if spec:
        captured = divergence.take_captured(doc)
        if json.loads(spec)["mode"] == "compare":
            record = {"key": captured["key"], "window": doc["window"], "kld_mean": float(captured["kld"].mean())}
            out.update({name: record for name in divergence.METRICS})
    return out


def _aggregation(metric: str):
    def aggregate(items: list) -> float:
        return divergence.aggregate(metric, items)

    aggregate.__name__ = metric
    return aggregate


#: lm-eval aggregations of the divergence metrics (the YAML names them: ``!function utils.agg_<metric>``)
AGGREGATIONS = {f"agg_{metric}": _aggregation(metric) for metric in divergence.METRICS}
