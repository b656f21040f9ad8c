"""Every causal-LM family of the installed transformers: compressed truly, or refused clearly.

Each family of ``MODEL_FOR_CAUSAL_LM_MAPPING_NAMES`` is built tiny from its own default config shrunk
(:mod:`registry`: 2 blocks, hidden 64, 4 experts) and compressed with Wanda 50%, GPTQ 4-bit and RTN 4-bit
(group 32). Then either kick refused clearly (a ``CompressionConfigError``, no weight changed) or the test
counts, from the weights alone and with its OWN idea of each matrix's axes (``nn.Linear [out, in]``,
``Conv1D [in, out]``, expert tensors by their sizes against the config's hidden size), that:

* every decoder-block matrix kick did not list as kept is compressed along its true axes (Wanda: exactly
  half of every output row zero; 4-bit: at most 16 distinct values per row in every 32-wide group of inputs);
* every weight kick lists as kept, every router (a matrix with a dimension of num_experts), every bias and
  non-matrix weight, and everything outside the decoder blocks is bit-for-bit unchanged;
* kick's measured sparsity and bits per weight equal the test's own counts over all block weights.

A family refused by default is run again with ``allow_partial=true`` and checked the same way.
Any other exception fails the test. A summary (built / compressed truly / refused / not buildable) is printed
at the end; with ``KICK_FAMILY_TABLE=<path>`` the markdown family table (docs/families.md) is written there.
"""

from __future__ import annotations

import gc
import math
import os
import re

import pytest
import torch
from torch import nn

from kick_models import prune, quantize
from kick_models.compress.config import CompressionConfigError
from kick_models.compress.sequential import find_decoder_layers
from registry import EXPERTS, HIDDEN, VOCAB, families, shrunk_model

CALIB = torch.randint(1, VOCAB, (2, 16), generator=torch.Generator().manual_seed(0))
GROUP = 32
METHODS = ("wanda", "gptq", "rtn")
RESULTS: dict[str, dict] = {}  # family -> {"built": reason | None, method: verdict}
_BUILT: dict[str, nn.Module | str] = {}


def built(family: str) -> nn.Module:
    """A fresh tiny model of the family (the build of the current family is cached as a state dict, so its three
    methods start from the same weights; compression works in place)."""
    if family not in _BUILT:
        for other in [f for f, v in _BUILT.items() if not isinstance(v, str)]:
            del _BUILT[other]  # one family's weights held at a time (memory stays flat over the registry)
        gc.collect()
        try:
            model = shrunk_model(family)
            with torch.no_grad():
                model(CALIB, use_cache=False)  # its own forward must run at this size (else: not buildable tiny)
            _BUILT[family] = {k: v.clone() for k, v in model.state_dict().items()}
        except Exception as exc:  # noqa: BLE001 - the reason is the listing
            _BUILT[family] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
    state = _BUILT[family]
    if isinstance(state, str):
        RESULTS.setdefault(family, {})["built"] = state
        # not a skip (those are for missing hardware): a known limit of the test's shrinking, listed in the summary
        pytest.xfail(f"{family} cannot be built tiny: {state}")
    RESULTS.setdefault(family, {})["built"] = None
    model = shrunk_model(family)
    model.load_state_dict(state)
    return model


# --------------------------------------------------------------------------- the test's own view of the weights


def orientations(model: nn.Module, path: str, layers: nn.ModuleList) -> dict[str, list[torch.Tensor]]:
    """The test's [out, in] matrices per block parameter (a list: one per expert for expert tensors), by full name.
    Parameters that are not weight matrices to the test (biases, norms, convolutions, routers, other raw
    parameters) are absent."""
    out: dict[str, list[torch.Tensor]] = {}
    for i, layer in enumerate(layers):
        modules = dict(layer.named_modules())
        for name, p in layer.named_parameters():
            owner_name, _, leaf = name.rpartition(".")
            owner = modules[owner_name]
            if p.dim() < 2 or "bias" in leaf or is_router(p, owner_name):
                continue
            if isinstance(owner, nn.Linear) and leaf == "weight":
                out[f"{path}.{i}.{name}"] = [p.detach()]
            elif type(owner).__name__ == "Conv1D" and leaf == "weight":
                out[f"{path}.{i}.{name}"] = [p.detach().t()]
            elif p.dim() == 3 and p.shape[0] == EXPERTS:  # fused experts [E, ., .]
                out[f"{path}.{i}.{name}"] = [expert_matrix(w, leaf, name) for w in p.detach()]
            elif p.dim() == 2 and p.shape[0] % EXPERTS == 0 and p.shape[0] > EXPERTS and p.shape[1] == HIDDEN \
                    and "experts" in owner_name.split("."):  # experts stacked along rows (DBRX: [E * I, H])
                out[f"{path}.{i}.{name}"] = [expert_matrix(w, leaf, name) for w in p.detach().reshape(EXPERTS, -1, HIDDEN)]
    return out


def is_router(p: torch.Tensor, owner_name: str) -> bool:
    """A matrix with a num_experts axis in a module named gate / router (or ``*_gate``, ``*_router``) on its path."""
    parts = owner_name.split(".")
    return p.dim() == 2 and EXPERTS in p.shape and any(
        x in ("gate", "router") or x.endswith(("_gate", "_router")) for x in parts)


def expert_matrix(w: torch.Tensor, leaf: str, full: str) -> torch.Tensor:
    """One expert's [out, in]: projections into the expert (gate/up/w1/v1) read the hidden size, ``down``/``w2``
    read the expert width (each expert tensor has exactly one axis of the hidden size in the tiny models)."""
    a, b = w.shape
    if (a == HIDDEN) == (b == HIDDEN):
        raise AssertionError(f"the test cannot tell the axes of {full} {tuple(w.shape)}")
    into_expert = not ("down" in leaf or leaf == "w2")
    in_axis = (1 if b == HIDDEN else 0) if into_expert else (1 if a == HIDDEN else 0)
    return w if in_axis == 1 else w.t()


def pruned_truly(W: torch.Tensor) -> bool:
    return bool(((W == 0).sum(1) == W.shape[1] // 2).all())


def quantized_truly(W: torch.Tensor, bits: int = 4) -> bool:
    for start in range(0, W.shape[1], GROUP):
        group = W[:, start:start + GROUP].sort(dim=1).values
        distinct = 1 + (group[:, 1:] != group[:, :-1]).sum(1)
        if int(distinct.max()) > 2 ** bits:
            return False
    return True


def storage_bits(W: torch.Tensor, bits: int = 4) -> int:
    rows, cols = W.shape
    return bits * rows * cols + (16 + bits) * math.ceil(cols / GROUP) * rows


# --------------------------------------------------------------------------- running kick and checking it


def run(model: nn.Module, method: str, allow_partial: bool):
    if method == "wanda":
        return prune(model, None, method="wanda", sparsity=0.5, calibration=CALIB, progress=False,
                     allow_partial=allow_partial)
    calibration = {"calibration": CALIB} if method == "gptq" else {}
    return quantize(model, None, method=method, wbits=4, groupsize=GROUP, progress=False, allow_partial=allow_partial,
                    **calibration)


def check_compressed(model: nn.Module, before: dict[str, torch.Tensor], report, method: str) -> dict:
    """Assert kick's result is true by the test's own counts; return the verdict for the table."""
    path, layers = find_decoder_layers(model)
    summary = report.summary()
    kept = summary["coverage"]["kept"]
    params = dict(model.named_parameters())
    mats = orientations(model, path, layers)
    block_weights = {f"{path}.{i}.{n}": p for i, layer in enumerate(layers) for n, p in layer.named_parameters()}
    for name, p in params.items():
        if name not in block_weights or name in kept or name not in mats:
            assert torch.equal(p.detach(), before[name]), f"{name} changed but kick did not compress it as a matrix" \
                + (" (listed as kept)" if name in kept else "")
    for name in mats:
        if name not in kept:
            assert name in block_weights
    zeros = numel = bits = 0
    for name, p in block_weights.items():
        if p.dim() < 2:
            continue
        zeros += int((p == 0).sum())
        numel += p.numel()
        if name in mats and name not in kept:
            for W in mats[name]:
                if method == "wanda":
                    assert pruned_truly(W), f"{name}: not exactly half of every output row pruned"
                else:
                    assert quantized_truly(W), f"{name}: more than 16 values in a {GROUP}-wide input group"
                    bits += storage_bits(W)
        else:
            assert name in kept, f"{name} (not a weight matrix to the test) is not listed as kept"
            bits += 32 * p.numel()
    assert summary["measured_sparsity"] == zeros / numel
    if method == "wanda":
        assert summary["bits_per_weight"] is None
    else:
        assert summary["bits_per_weight"] == pytest.approx(bits / numel, rel=1e-12)
    n_mats = sum(1 for n in mats if n not in kept)
    return {"compressed": n_mats, "fraction": summary["coverage"]["compressed_fraction"], "kept": kept}


def refusal(exc: CompressionConfigError, model: nn.Module, before: dict[str, torch.Tensor]) -> str:
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), before[name]), f"refused, but {name} had already changed"
    message = str(exc)
    assert re.search(r"[A-Za-z_]\w*(\.\w+)+|[A-Z]\w+For\w+", message), f"the refusal names nothing: {message}"
    return message


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", families())
def test_family_compressed_truly_or_refused_clearly(family, method, one_torch_thread):
    model = built(family)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    verdict: dict = {}
    try:
        report = run(model, method, allow_partial=False)
        verdict.update(check_compressed(model, before, report, method), refused=None)
    except CompressionConfigError as exc:
        verdict["refused"] = refusal(exc, model, before)
        if "allow_partial" in verdict["refused"]:
            model = built(family)
            try:
                verdict["partial"] = check_compressed(model, before, run(model, method, allow_partial=True), method)
            except CompressionConfigError as exc2:
                verdict["partial"] = {"refused": refusal(exc2, model, before)}
    RESULTS[family][method] = verdict


# --------------------------------------------------------------------------- summary and the family table


def _reason(message: str) -> str:
    """The refusal's gist for the table: the first sentence, without the model class prefix."""
    return message.split(". ")[0].split(": ", 1)[-1][:220]


def verdict_row(family: str, result: dict) -> tuple[str, str, str]:
    """(family, verdict, what is kept and why) for one built family."""
    runs = [result.get(m) for m in METHODS]
    if any(r is None for r in runs):
        return family, "not run", ""
    if all(r["refused"] is None for r in runs):
        kept = sorted({why for r in runs for why in r["kept"].values()})
        n_kept = max(len(r["kept"]) for r in runs)
        frac = min(r["fraction"] for r in runs)
        return family, f"compressed truly ({frac:.1%} of block weights)", (f"{n_kept} kept: " + "; ".join(kept)) if kept else "nothing"
    refused = next(r for r in runs if r["refused"] is not None)
    partial = [r.get("partial") for r in runs]
    text = "refused: " + _reason(refused["refused"])
    if all(p is not None and "refused" not in p for p in partial):
        frac = min(p["fraction"] for p in partial)
        text += f"; allow_partial=true compresses {frac:.1%} truly"
    return family, "refused clearly", text


def summary_lines() -> list[str]:
    done = {f: r for f, r in RESULTS.items() if r.get("built") is None}
    not_built = {f: r["built"] for f, r in RESULTS.items() if r.get("built") is not None}
    rows = [verdict_row(f, r) for f, r in sorted(done.items())]
    truly = [r for r in rows if r[1].startswith("compressed")]
    refused = [r for r in rows if r[1].startswith("refused")]
    lines = [f"kick family registry: {len(RESULTS)} families, {len(done)} built tiny, {len(truly)} compressed truly "
             f"(Wanda, GPTQ 4-bit, RTN 4-bit), {len(refused)} refused clearly, {len(not_built)} not buildable tiny"]
    lines += [f"  refused {f}: {why}" for f, _, why in refused]
    lines += [f"  not buildable {f}: {why}" for f, why in sorted(not_built.items())]
    return lines


def family_table() -> str:
    import transformers

    done = {f: r for f, r in RESULTS.items() if r.get("built") is None}
    not_built = {f: r["built"] for f, r in RESULTS.items() if r.get("built") is not None}
    out = ["# Decoder families: compressed truly, or refused clearly", "",
           f"Generated by `tests/test_registry_families.py` on transformers {transformers.__version__} "
           "(`KICK_FAMILY_TABLE=docs/families.md pytest tests/test_registry_families.py`). Every family of "
           "`MODEL_FOR_CAUSAL_LM_MAPPING_NAMES` is built tiny from its own default config (2 blocks, hidden 64, "
           "4 experts) and compressed with Wanda 50%, GPTQ 4-bit and RTN 4-bit; the test counts from the weights "
           "that every matrix not listed as kept is compressed along its true axes, that everything kept is "
           "unchanged, and that kick's reported sparsity and bits equal its own counts.", "",
           summary_lines()[0].removeprefix("kick family registry: ").capitalize() + ".", "",
           "| family | verdict | kept / why |", "|---|---|---|"]
    out += [f"| `{f}` | {v} | {w.replace('|', '/')} |" for f, v, w in (verdict_row(f, r) for f, r in sorted(done.items()))]
    out += ["", "## Not buildable tiny from the default config", "", "| family | reason |", "|---|---|"]
    out += [f"| `{f}` | {why.replace('|', '/')} |" for f, why in sorted(not_built.items())]
    return "\n".join(out) + "\n"


@pytest.fixture(scope="module", autouse=True)
def family_table_file():
    """With ``KICK_FAMILY_TABLE=<path>``, the family table is written there (atomically) after the module's tests;
    the summary lines are printed by ``pytest_terminal_summary`` in conftest.py."""
    yield
    target = os.environ.get("KICK_FAMILY_TABLE")
    if target and RESULTS:
        tmp = f"{target}.tmp"
        with open(tmp, "w") as fh:
            fh.write(family_table())
        os.replace(tmp, target)
