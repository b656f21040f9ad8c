"""Calibration data -> fixed token windows ``[nsamples, seqlen]`` (the references' sampling).

Sources (``CalibrationConfig.source``):

* ``c4`` - documents; offline ``$KICK_DATA_DIR/c4/c4_validation_2k.parquet`` (a stand-in: the
  references sample the first TRAIN shard ``allenai/c4 en/c4-train.00000-of-01024.json.gz``,
  which is what the online path loads).
* ``wikitext2`` - the TRAIN split joined with ``"\\n\\n"`` and tokenized once (GPTQ's datautils);
  offline only ``$KICK_DATA_DIR/wikitext2/wiki.train.raw`` is used, never the test file.
* a local ``.txt`` (one text, like wikitext2), ``.jsonl`` (``"text"`` field per line) or
  ``.parquet`` (``"text"`` column) file; the last two are documents like c4.
* any other string: a Hugging Face dataset id (``name`` or ``name:config``), split ``train``,
  column ``text``, treated as documents.

Sampling (Wanda ``get_c4`` / GPTQ ``get_wikitext2``): ``random.seed(seed)``; per sample draw random
documents until one tokenizes to MORE than ``seqlen`` tokens, then take a random window of exactly
``seqlen`` tokens (``i = randint(0, len - seqlen - 1)``). For one long text the window is drawn
directly from the whole token stream.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from collections.abc import Sequence
from pathlib import Path

import torch

from kick_models.compress.config import CalibrationConfig
from kick_models.data import DataNotFoundError, DataSchemaError, provenance, resolve_with_provenance

logger = logging.getLogger(__name__)

C4_LOCAL = "c4/c4_validation_2k.parquet"
C4_ONLINE = ("allenai/c4", "en/c4-train.00000-of-01024.json.gz")
WIKITEXT2_LOCAL_TRAIN = "wikitext2/wiki.train.raw"


class CalibrationDataError(ValueError):
    """The calibration source exists but cannot give the requested windows."""


C4_STAND_IN = (f"C4 VALIDATION documents stand in for the paper's C4 TRAIN shard {C4_ONLINE[0]} {C4_ONLINE[1]} "
               "(used when no local copy is configured)")


# --------------------------------------------------------------------------- loading sources
# Each loader returns ("documents", list[str]) or ("stream", str), plus the provenance record
# (kick_models.data.provenance: source, stand_in, records, sha256).


def _read_parquet_texts(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    schema = pq.read_schema(path)
    if "text" not in schema.names:
        raise DataSchemaError(f"{path}: calibration parquet files need a 'text' column; columns are {schema.names}")
    return [t for t in pq.read_table(path, columns=["text"]).column("text").to_pylist() if t]


def _read_jsonl_texts(path: Path) -> list[str]:
    texts = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataSchemaError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise DataSchemaError(f"{path}:{lineno}: each line must be a JSON object with a string 'text' field")
            if record["text"]:
                texts.append(record["text"])
    return texts


def _load_c4() -> tuple[str, list[str], dict]:
    def local(path: Path) -> list[str]:
        return _read_parquet_texts(path)

    def online() -> list[str]:
        from datasets import load_dataset

        data = load_dataset(C4_ONLINE[0], data_files={"train": C4_ONLINE[1]}, split="train")
        return data["text"]

    return "documents", *resolve_with_provenance("C4 calibration data", C4_LOCAL, local, online,
                                                 f"{C4_ONLINE[0]} data_files={C4_ONLINE[1]}",
                                                 local_stand_in=C4_STAND_IN)


def _load_wikitext2() -> tuple[str, str, dict]:
    def local(path: Path) -> str:
        lines = path.read_text(encoding="utf-8").split("\n")
        return "\n\n".join(line + "\n" if line.strip() else "" for line in lines)

    def online() -> str:
        from datasets import load_dataset

        return "\n\n".join(load_dataset("wikitext", "wikitext-2-raw-v1", split="train")["text"])

    try:
        return "stream", *resolve_with_provenance("WikiText-2 TRAIN calibration data", WIKITEXT2_LOCAL_TRAIN, local,
                                                  online, "wikitext/wikitext-2-raw-v1 split=train")
    except DataNotFoundError as exc:
        raise DataNotFoundError(
            f"{exc}\nWikiText-2 calibration needs the TRAIN split: only {WIKITEXT2_LOCAL_TRAIN} in the data "
            f"directory is used offline, never the test file (perplexity is measured on it). Use calib=c4, "
            f"or calib=/path/to/file.txt|.jsonl|.parquet."
        ) from None


def _file_record(path: Path, value) -> dict:
    record = provenance(f"calibration file {path.name}", "local", str(path.resolve()), value)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    record["file_sha256"] = h.hexdigest()
    return record


def _load_file(path: Path) -> tuple[str, str | list[str], dict]:
    if not path.is_file():
        raise FileNotFoundError(f"Calibration file {path} does not exist.")
    suffix = path.suffix.lower()
    if suffix == ".txt":
        text = path.read_text(encoding="utf-8")
        if not text.strip():
            raise CalibrationDataError(f"Calibration file {path} is empty.")
        return "stream", text, _file_record(path, text)
    texts = _read_jsonl_texts(path) if suffix == ".jsonl" else _read_parquet_texts(path)
    if not texts:
        raise CalibrationDataError(f"Calibration file {path} is empty (no non-empty 'text' records).")
    return "documents", texts, _file_record(path, texts)


def _load_hf(dataset_id: str) -> tuple[str, list[str], dict]:
    from datasets import load_dataset

    name, _, config = dataset_id.partition(":")
    data = load_dataset(name, config or None, split="train")
    if "text" not in data.column_names:
        raise DataSchemaError(f"Hugging Face dataset {dataset_id!r} has no 'text' column (columns: {data.column_names}).")
    texts = [t for t in data["text"] if t]
    return "documents", texts, provenance(f"calibration dataset {dataset_id}", "online",
                                          f"Hugging Face dataset {dataset_id} split=train", texts)


#: The last source resolved (key: source + data dir), so that resolving it before the model loads
#: (:func:`resolve_source`) does not read it twice; :func:`load_calibration` consumes it.
_RESOLVED: dict[tuple[str, str], tuple[str, str | list[str], dict]] = {}


def _memo_key(source: str) -> tuple[str, str]:
    return source, os.environ.get("KICK_DATA_DIR", "")


def resolve_source(source: str) -> tuple[str, str | list[str], dict]:
    """Load a calibration source: ``(kind, data, provenance)``, kind ``"documents"`` or ``"stream"``.

    ``provenance``: where it came from (local path / online id), ``stand_in`` (why it is not the
    paper's source, or None), ``records`` and ``sha256`` (see :mod:`kick_models.data`). Kept in memory
    until :func:`load_calibration` uses it, so the kick-* models resolve it before the model loads.
    """
    key = _memo_key(source)
    if key in _RESOLVED:
        return _RESOLVED[key]
    if source == "c4":
        result = _load_c4()
    elif source == "wikitext2":
        result = _load_wikitext2()
    else:
        path = Path(os.path.expanduser(source))
        if path.suffix.lower() in (".txt", ".jsonl", ".parquet") or path.exists():
            result = _load_file(path)
        else:
            result = _load_hf(source)
    _RESOLVED.clear()
    _RESOLVED[key] = result
    return result


def load_source(source: str) -> tuple[str, str | list[str]]:
    """Load a calibration source as ``("documents", texts)`` or ``("stream", text)``."""
    kind, data, _ = resolve_source(source)
    return kind, data


# --------------------------------------------------------------------------- windows


def _encode(tokenizer, text: str) -> torch.Tensor:
    return tokenizer(text, return_tensors="pt").input_ids[0]


def windows_from_stream(text: str, tokenizer, nsamples: int, seqlen: int, seed: int, what: str = "text") -> torch.Tensor:
    """GPTQ's wikitext2 sampling: tokenize once, ``nsamples`` random windows of ``seqlen`` tokens."""
    ids = _encode(tokenizer, text)
    if ids.numel() <= seqlen:
        raise CalibrationDataError(
            f"The calibration {what} has {ids.numel()} tokens; one window of seqlen={seqlen} needs at least "
            f"{seqlen + 1}. Use a longer text, or a smaller seqlen."
        )
    rng = random.Random(seed)
    out = torch.empty(nsamples, seqlen, dtype=torch.long)
    for s in range(nsamples):
        i = rng.randint(0, ids.numel() - seqlen - 1)
        out[s] = ids[i:i + seqlen]
    return out


def windows_from_documents(texts: Sequence[str], tokenizer, nsamples: int, seqlen: int, seed: int,
                           what: str = "documents") -> torch.Tensor:
    """Wanda's get_c4 sampling: random documents until one is longer than ``seqlen``, then a random window."""
    if len(texts) == 0:
        raise CalibrationDataError(f"The calibration {what} contain no documents.")
    rng = random.Random(seed)
    cache: dict[int, torch.Tensor] = {}
    too_short: set[int] = set()
    out = torch.empty(nsamples, seqlen, dtype=torch.long)
    for s in range(nsamples):
        while True:
            i = rng.randint(0, len(texts) - 1)
            if i not in cache:
                cache[i] = _encode(tokenizer, texts[i])
            ids = cache[i]
            if ids.numel() > seqlen:
                break
            too_short.add(i)
            if len(too_short) == len(texts):
                longest = max(t.numel() for t in cache.values())
                raise CalibrationDataError(
                    f"None of the {len(texts)} calibration {what} is longer than seqlen={seqlen} tokens (the longest "
                    f"has {longest} tokens; a window needs a document of at least {seqlen + 1}). Use a smaller seqlen "
                    f"or longer documents."
                )
        j = rng.randint(0, ids.numel() - seqlen - 1)
        out[s] = ids[j:j + seqlen]
    return out


def model_max_positions(model) -> int | None:
    """The model's maximum context length from its (text) config, or None when unknown."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    value = getattr(config, "max_position_embeddings", None)
    return int(value) if isinstance(value, int) and value > 0 else None


def effective_seqlen(seqlen: int, max_positions: int | None) -> int:
    """``seqlen`` capped at the model's max positions (with a warning)."""
    if max_positions is not None and seqlen > max_positions:
        logger.warning("Calibration seqlen=%d exceeds the model's max positions %d; using seqlen=%d.",
                       seqlen, max_positions, max_positions)
        return max_positions
    return seqlen


def load_calibration(cfg: CalibrationConfig, tokenizer, max_positions: int | None = None,
                     record: dict | None = None) -> torch.LongTensor:
    """Token windows ``[cfg.nsamples, seqlen]`` from ``cfg.source`` (seqlen capped at ``max_positions``).

    ``record``: a dict to fill with the source's provenance (see :func:`resolve_source`).
    """
    seqlen = effective_seqlen(cfg.seqlen, max_positions)
    kind, data, source_record = resolve_source(cfg.source)
    _RESOLVED.pop(_memo_key(cfg.source), None)
    if record is not None:
        record.update(source_record)
    what = f"data from {cfg.source!r}"
    if kind == "stream":
        tokens = windows_from_stream(data, tokenizer, cfg.nsamples, seqlen, cfg.seed, what=what)
    else:
        tokens = windows_from_documents(data, tokenizer, cfg.nsamples, seqlen, cfg.seed, what=f"documents from {cfg.source!r}")
    logger.info("Calibration: %d windows of %d tokens from %s (seed %d), fingerprint %s",
                tokens.shape[0], tokens.shape[1], cfg.source, cfg.seed, fingerprint(tokens)[:12])
    return tokens


def fingerprint(tokens: torch.Tensor) -> str:
    """sha256 hex of the token ids, including dtype and shape."""
    t = tokens.detach().to("cpu").contiguous()
    h = hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}|".encode())
    h.update(t.numpy().tobytes())
    return h.hexdigest()
