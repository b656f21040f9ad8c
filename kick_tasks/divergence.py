"""Divergence of a model's next-token distributions from a saved dense reference.

The quantities ``llama-perplexity --kl-divergence`` prints (llama.cpp ``tools/perplexity/perplexity.cpp``),
computed per scored token of ``kick_wikitext_ppl`` and reported as lm-eval metrics of that task:

* ``kld_mean`` (+ ``kld_mean_unc``), ``kld_median``, ``kld_p99``, ``kld_p999``, ``kld_max``:
  KL(P_dense || P_comp) = sum_v p_dense(v) ln(p_dense(v) / p_comp(v)), natural log, per token;
* ``same_top`` (+ ``same_top_unc``): share of tokens whose most likely next token is unchanged
  (llama.cpp prints it x100 as "Same top p");
* ``dp_mean`` (+ ``dp_mean_unc``), ``dp_rms`` (+ ``dp_rms_unc``): dp = p_comp(next) - p_dense(next) for the
  text's actual next token;
* ``ln_ppl_ratio`` (+ ``ln_ppl_ratio_unc``): mean NLL_comp - mean NLL_dense = ln(PPL_comp / PPL_dense);
* ``kld_tokens``: number of tokens compared; ``kld_lower_bound``: 1.0 when the reference holds only the
  dense top-k (then every KLD figure is a lower bound of the true KLD), 0.0 for the full form;
* ``kld_topk_mean``: the mean KLD the top-k form (k = 256) gives on the same tokens, computed from a full
  reference (so the gap between the lower bound and the full value is measured); equals ``kld_mean`` with a
  top-k reference.

Uncertainties, median and percentiles use llama.cpp's formulas (``mean_and_uncertainty``: sqrt((E[x^2] - E[x]^2) /
(n - 1)), 0 for n <= 10; percentile: linear interpolation at fraction * (n - 1); ln PPL ratio with the covariance
of the two NLLs).

The reference (written by the dense run, read by every compressed run) is a folder: ``reference.json`` (header:
form, vocabulary, window length, the sha256 of every window's token ids and of every data file, and its own
sha256) and one ``wNNNNN.npz`` per window. Two forms:

* ``full``: every dense log-probability, llama.cpp's uint16 code over [max - 16, max] of each token's logits
  (scale, min log-prob, 65,536 levels), 2 bytes per vocabulary entry and token. KL uses the tokens whose
  dense log-probability is > -16 (llama.cpp's rule); the compressed side is coded the same way, so a model
  compared with itself gives exactly 0.
* ``topk``: the dense top-k log-probabilities (float32), their ids and the remaining mass (float64, summed over
  the other tokens); KL = sum over the top k of
  p ln(p/q) + P_tail ln(P_tail / Q_tail) (the remaining mass of both as one outcome). By the log-sum
  inequality this is a LOWER BOUND of the true KL; equal when k covers the vocabulary.

Both forms store the dense float32 log-probability of the actual next token and the dense argmax exactly,
so ``same_top``, ``dp_*`` and ``ln_ppl_ratio`` are exact in either form.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

FORMAT = "kick-divergence-reference"
VERSION = 1
HEADER = "reference.json"
QUANT_RANGE = 16.0  # llama.cpp: log-probs coded over [max - 16, max]
KLD_MIN_LOG_PROB = -16.0  # llama.cpp: dense tokens with log-prob <= -16 are left out of the KL sum
DEFAULT_BUDGET_MB = 2048
DEFAULT_TOPK = 256
ROWS_PER_CHUNK = 256  # rows of the [tokens, vocab] matrices handled at once

#: metric name -> higher_is_better (the YAML's metric_list repeats it; tests check they agree)
METRICS = {
    "kld_mean": False, "kld_mean_unc": False, "kld_median": False, "kld_p99": False, "kld_p999": False,
    "kld_max": False, "same_top": True, "same_top_unc": False, "dp_mean": True, "dp_mean_unc": False,
    "dp_rms": False, "dp_rms_unc": False, "ln_ppl_ratio": False, "ln_ppl_ratio_unc": False,
    "kld_tokens": True, "kld_lower_bound": False, "kld_topk_mean": False,
}


class ReferenceError(ValueError):
    """A dense reference that cannot be used (missing, corrupt, or made for other windows)."""


# ------------------------------------------------------------------ hashing


def token_sha256(ids: Iterable[int]) -> str:
    return hashlib.sha256(np.asarray(list(ids), dtype="<i8").tobytes()).hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _header_digest(header: dict[str, Any]) -> str:
    body = {k: v for k, v in header.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


# ------------------------------------------------------------------ per-token quantities


def quantize_log_probs(logits):
    """llama.cpp's uint16 code of each row's log-softmax over [max - 16, max] -> (codes, scale, min_log_prob)."""
    import torch

    logits = logits.float()
    max_logit = logits.max(dim=-1, keepdim=True).values
    min_logit = torch.maximum(logits.min(dim=-1, keepdim=True).values, max_logit - QUANT_RANGE)
    log_sum_exp = torch.log(torch.exp(logits - max_logit).double().sum(dim=-1, keepdim=True)).float()
    min_log_prob = min_logit - max_logit - log_sum_exp
    scale = (max_logit - min_logit) / 65535.0
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.where(logits > min_logit, torch.round((logits - min_logit) * (1.0 / safe)), torch.zeros_like(logits))
    codes = torch.where(scale > 0, codes, torch.zeros_like(codes)).clamp(0, 65535).to(torch.int32)
    return codes.numpy().astype(np.uint16), scale[:, 0].numpy(), min_log_prob[:, 0].numpy()


def dequantize(codes: np.ndarray, scale: np.ndarray, min_log_prob: np.ndarray) -> np.ndarray:
    return scale[:, None].astype(np.float32) * codes.astype(np.float32) + min_log_prob[:, None].astype(np.float32)


def kld_full(ref_codes, ref_scale, ref_min, comp_logits) -> np.ndarray:
    """Per-token KL(dense || comp) from the uint16 reference, the compressed side coded the same way."""
    p_log_base = dequantize(ref_codes, ref_scale, ref_min).astype(np.float64)
    q_log = dequantize(*quantize_log_probs(comp_logits)).astype(np.float64)
    keep = p_log_base > KLD_MIN_LOG_PROB
    terms = np.where(keep, np.exp(p_log_base) * (p_log_base - q_log), 0.0)
    return terms.sum(axis=-1)


def tail_mass(log_probs, ids):
    """Per row: the probability outside ``ids`` [n, k], summed directly over the complement (0 when k = V)."""
    import torch

    probs = torch.exp(log_probs.double())
    probs.scatter_(-1, ids.long(), 0.0)
    return probs.sum(dim=-1).numpy()


def kld_topk(ref_lp: np.ndarray, ref_ids: np.ndarray, ref_tail: np.ndarray, comp_log_probs) -> np.ndarray:
    """Per-token KL lower bound: top-k terms + the remaining masses of both as one outcome."""
    import torch

    ids = torch.from_numpy(ref_ids.astype(np.int64))
    p = ref_lp.astype(np.float64)
    q = comp_log_probs.gather(-1, ids).double().numpy()
    head = (np.exp(p) * (p - q)).sum(axis=-1)
    p_tail, q_tail = ref_tail.astype(np.float64), tail_mass(comp_log_probs, ids)
    with np.errstate(divide="ignore", invalid="ignore"):
        tail = np.where(p_tail > 0, p_tail * (np.log(p_tail) - np.log(q_tail)), 0.0)
    return head + tail


# ------------------------------------------------------------------ the reference on disk


class ReferenceWriter:
    """Writes a reference folder atomically: files go to ``<path>.tmp-<pid>`` and the folder is renamed at the end."""

    def __init__(self, path: str | Path, *, form: str, topk: int | None, vocab_size: int, info: dict[str, Any]):
        if form not in ("full", "topk"):
            raise ValueError(f"form must be 'full' or 'topk', got {form!r}")
        self.path = Path(path)
        self.tmp = self.path.with_name(f"{self.path.name}.tmp-{os.getpid()}")
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        self.header: dict[str, Any] = {"format": FORMAT, "version": VERSION, "form": form,
                                       "topk": topk if form == "topk" else None, "vocab_size": int(vocab_size),
                                       **info, "windows": {}}

    def add(self, window: int, window_sha256: str, input_ids: Sequence[int], n_scored: int,
            arrays: dict[str, np.ndarray]) -> None:
        name = f"w{int(window):05d}.npz"
        with open(self.tmp / name, "wb") as f:
            np.savez(f, **arrays)
        self.header["windows"][str(int(window))] = {
            "file": name, "window_sha256": window_sha256, "input_sha256": token_sha256(input_ids), "n_scored": int(n_scored),
            "bytes": (self.tmp / name).stat().st_size, "sha256": file_sha256(self.tmp / name)}

    def finish(self) -> Path:
        self.header["sha256"] = _header_digest(self.header)
        (self.tmp / HEADER).write_text(json.dumps(self.header, indent=1, sort_keys=True), encoding="utf-8")
        old = self.path.with_name(f"{self.path.name}.old-{os.getpid()}")
        if self.path.exists():
            self.path.rename(old)
        self.tmp.rename(self.path)
        shutil.rmtree(old, ignore_errors=True)
        return self.path


class Reference:
    """A dense reference folder, checked on open (header hash) and per window (file hash, token ids)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        header_file = self.path / HEADER
        if not header_file.is_file():
            raise ReferenceError(
                f"no dense reference at {self.path} ({HEADER} missing). Write one with the dense model first: "
                f"--tasks kick_wikitext_ppl --metadata '{{\"kick_reference_out\": \"{self.path}\"}}' "
                f"(kick sweep does it for its dense config).")
        try:
            header = json.loads(header_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ReferenceError(f"{header_file} is corrupt ({exc}); rebuild the reference with the dense run") from None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise ReferenceError(f"{header_file} is not a kick divergence reference")
        if header.get("version") != VERSION:
            raise ReferenceError(f"{header_file}: reference version {header.get('version')}, this kick reads "
                                 f"version {VERSION}; rebuild it with the dense run")
        if header.get("sha256") != _header_digest(header):
            raise ReferenceError(f"{header_file} is corrupt (its sha256 does not match its content); rebuild the "
                                 f"reference with the dense run")
        self.header = header

    @property
    def form(self) -> str:
        return self.header["form"]

    def check_windows(self, *, seqlen: int, window_sha256: Sequence[str], tokenizer: str,
                      vocab_size: int | None) -> None:
        """Refuse (ReferenceError naming the difference) a run whose windows are not the reference's."""
        h = self.header
        where = f"the dense reference {self.path}"
        if h.get("seqlen") != seqlen:
            raise ReferenceError(f"{where} was made with windows of {h.get('seqlen')} tokens, this run cuts "
                                 f"{seqlen}: set --metadata ppl_seqlen={h.get('seqlen')} (or rebuild the reference)")
        if vocab_size is not None and h.get("tokenizer_vocab_size") not in (None, vocab_size):
            raise ReferenceError(f"{where} was made with a tokenizer of {h.get('tokenizer_vocab_size')} tokens "
                                 f"({h.get('tokenizer')}), this run's has {vocab_size} ({tokenizer}): the models "
                                 f"must share the tokenizer")
        if h.get("n_windows") != len(window_sha256):
            raise ReferenceError(f"{where} was cut into {h.get('n_windows')} windows, this run's text into "
                                 f"{len(window_sha256)}: other data or another tokenizer ({h.get('tokenizer')} vs "
                                 f"{tokenizer})")
        differ = [int(i) for i, e in h["windows"].items() if e["window_sha256"] != window_sha256[int(i)]]
        if differ:
            raise ReferenceError(f"{where}: the token ids of window(s) {sorted(differ)[:5]} differ from this run's "
                                 f"(other data or another tokenizer: {h.get('tokenizer')} vs {tokenizer}); "
                                 f"not compared")

    def window(self, window: int, input_ids: Sequence[int]) -> dict[str, np.ndarray]:
        entry = self.header["windows"].get(str(int(window)))
        if entry is None:
            raise ReferenceError(f"the dense reference {self.path} has no window {window} (it holds "
                                 f"{len(self.header['windows'])}; was the dense run made with a smaller --limit?)")
        if entry["input_sha256"] != token_sha256(input_ids):
            raise ReferenceError(f"window {window}: the model input differs from the dense reference's "
                                 f"({self.path}); another tokenizer, BOS setting or window length")
        path = self.path / entry["file"]
        if not path.is_file() or path.stat().st_size != entry["bytes"] or file_sha256(path) != entry["sha256"]:
            raise ReferenceError(f"{path} is missing, truncated or corrupt (sha256 mismatch); rebuild the "
                                 f"reference with the dense run")
        with np.load(path) as data:
            return {k: data[k] for k in data.files}


# ------------------------------------------------------------------ one window: dense arrays / comparison


def dense_arrays(logits, targets, form: str, topk: int | None) -> dict[str, np.ndarray]:
    """What the reference keeps of one window: per scored row of ``logits`` [n, V] and target ids [n]."""
    import torch

    out: dict[str, list[np.ndarray]] = {}
    for start in range(0, logits.shape[0], ROWS_PER_CHUNK):
        rows = logits[start:start + ROWS_PER_CHUNK].float()
        lp = torch.log_softmax(rows, dim=-1)
        tgt = targets[start:start + ROWS_PER_CHUNK]
        part = {"target_lp": lp.gather(-1, tgt[:, None])[:, 0].numpy(),
                "top": rows.argmax(dim=-1).to(torch.int32).numpy()}
        if form == "full":
            part["codes"], part["scale"], part["min_lp"] = quantize_log_probs(rows)
        else:
            k = min(int(topk), rows.shape[-1])
            values, ids = lp.topk(k, dim=-1)
            part["topk_lp"], part["topk_ids"] = values.numpy(), ids.to(torch.int32).numpy()
            part["tail_mass"] = tail_mass(lp, ids)
        for key, value in part.items():
            out.setdefault(key, []).append(value)
    return {k: np.concatenate(v) for k, v in out.items()}


def compare_window(ref: dict[str, np.ndarray], logits, targets) -> dict[str, np.ndarray]:
    """Per-token KLD, same-top flag, NLLs and dp of one window against its reference arrays."""
    import torch

    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, logits.shape[0], ROWS_PER_CHUNK):
        sl = slice(start, start + ROWS_PER_CHUNK)
        rows = logits[sl].float()
        lq = torch.log_softmax(rows, dim=-1)
        nll_comp = -lq.gather(-1, targets[sl][:, None])[:, 0].double().numpy()
        nll_base = -ref["target_lp"][sl].astype(np.float64)
        if "codes" in ref:
            kld = kld_full(ref["codes"][sl], ref["scale"][sl], ref["min_lp"][sl], rows)
            # what the top-k form would give on the same tokens (how much lower the bound is)
            p_log = torch.from_numpy(dequantize(ref["codes"][sl], ref["scale"][sl], ref["min_lp"][sl]))
            values, ids = p_log.topk(min(DEFAULT_TOPK, p_log.shape[-1]), dim=-1)
            kld_k = kld_topk(values.numpy(), ids.numpy(), tail_mass(p_log, ids), lq)
        else:
            kld = kld_k = kld_topk(ref["topk_lp"][sl], ref["topk_ids"][sl], ref["tail_mass"][sl], lq)
        for key, value in (("kld", kld), ("kld_topk", kld_k), ("same_top", rows.argmax(dim=-1).numpy() == ref["top"][sl]),
                           ("nll_comp", nll_comp), ("nll_base", nll_base),
                           ("dp", np.exp(-nll_comp) - np.exp(-nll_base))):
            parts.setdefault(key, []).append(value)
    return {k: np.concatenate(v) for k, v in parts.items()}


# ------------------------------------------------------------------ aggregation (llama.cpp's formulas)


def mean_and_uncertainty(values: np.ndarray) -> tuple[float, float]:
    n = len(values)
    if n < 1:
        return 0.0, 0.0
    f = float(np.mean(values))
    df = float(np.mean(np.square(values))) - f * f
    return f, (math.sqrt(df / (n - 1)) if df > 0 and n > 10 else 0.0)


def percentile(sorted_values: np.ndarray, fraction: float) -> float:
    if fraction <= 0:
        return float(sorted_values[0])
    if fraction >= 1:
        return float(sorted_values[-1])
    p = fraction * (len(sorted_values) - 1)
    i = int(p)
    p -= i
    return float((1 - p) * sorted_values[i] + p * sorted_values[min(i + 1, len(sorted_values) - 1)])


def median(sorted_values: np.ndarray) -> float:
    n = len(sorted_values)
    return float(0.5 * (sorted_values[n // 2] + sorted_values[n // 2 - 1]) if n % 2 == 0 else sorted_values[n // 2])


def summarize(per_token: dict[str, np.ndarray], lower_bound: bool) -> dict[str, float]:
    """Every divergence metric from the concatenated per-token arrays."""
    kld = np.asarray(per_token["kld"], dtype=np.float64)
    n = len(kld)
    if n == 0:
        raise ValueError("no tokens to compare")
    ordered = np.sort(kld)
    kld_mean, kld_unc = mean_and_uncertainty(kld)
    dp = np.asarray(per_token["dp"], dtype=np.float64)
    dp_mean, dp_unc = mean_and_uncertainty(dp)
    mse, mse_unc = mean_and_uncertainty(np.square(dp))
    rms = math.sqrt(mse)
    same = float(np.mean(per_token["same_top"]))
    nll, nll_base = np.asarray(per_token["nll_comp"]), np.asarray(per_token["nll_base"])
    lp, lp_unc = mean_and_uncertainty(nll)
    lpb, lpb_unc = mean_and_uncertainty(nll_base)
    cov = (float(np.mean(nll * nll_base)) - lp * lpb) / (n - 1) if n >= 10 else 0.0
    return {
        "kld_mean": kld_mean, "kld_mean_unc": kld_unc, "kld_median": median(ordered),
        "kld_p99": percentile(ordered, 0.99), "kld_p999": percentile(ordered, 0.999), "kld_max": float(ordered[-1]),
        "same_top": same, "same_top_unc": math.sqrt(same * (1 - same) / (n - 1)) if n > 1 else 0.0,
        "dp_mean": dp_mean, "dp_mean_unc": dp_unc, "dp_rms": rms,
        "dp_rms_unc": 0.5 / rms * mse_unc if rms > 0 else 0.0,
        "ln_ppl_ratio": lp - lpb, "ln_ppl_ratio_unc": math.sqrt(max(lp_unc ** 2 + lpb_unc ** 2 - 2 * cov, 0.0)),
        "kld_tokens": float(n), "kld_lower_bound": 1.0 if lower_bound else 0.0,
        "kld_topk_mean": float(np.mean(per_token["kld_topk"])),
    }


# ------------------------------------------------------------------ hand-over from the scoring hook to the task

#: request key -> per-token arrays of a compared window, or {"written": ...} for a reference window written
CAPTURED: dict[str, dict[str, Any]] = {}


def window_key(doc: dict[str, Any]) -> str:
    """The hand-over key of one window: its index and token ids (not the request text, which lm-eval may
    rewrite, e.g. with --apply_chat_template)."""
    return f"{doc['window']}:{doc['window_sha256']}"


def take_captured(doc: dict[str, Any]) -> dict[str, Any]:
    key = window_key(doc)
    if key not in CAPTURED:
        raise RuntimeError(
            "kick_wikitext_ppl divergence: this window's token distributions were not captured. The capture works "
            "with lm-eval's Hugging Face model classes (--model hf and the kick-* models), in one process (no "
            "accelerate/torchrun data parallelism) and without --use_cache; this run's model scored the window "
            "some other way.")
    return {"key": key, **CAPTURED[key]}


def aggregate(metric: str, items: Sequence[dict[str, Any]]) -> float:
    """lm-eval aggregation of one divergence metric; ``items`` are process_results' per-window records."""
    keys = sorted({item["key"] for item in items})
    missing = [k for k in keys if k not in CAPTURED]
    if missing:
        raise RuntimeError(f"divergence: {len(missing)} window(s) were scored in another process; the divergence "
                           f"metrics need a single-process run")
    windows = [CAPTURED[k] for k in keys]
    merged = {name: np.concatenate([w[name] for w in windows])
              for name in ("kld", "kld_topk", "same_top", "nll_comp", "nll_base", "dp")}
    return summarize(merged, lower_bound=any(w["lower_bound"] for w in windows))[metric]
