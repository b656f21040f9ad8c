"""``kick inspect``: what a checkpoint's weights hold, measured, whoever made it.

    kick inspect CHECKPOINT_DIR [--gguf_file FILE] [--json]

Reads ``config.json`` (its ``quantization_config``: compressed-tensors scheme, GPTQ / AWQ bits and group,
bitsandbytes, FP8) and measures the weights themselves:

* ``format``: the declared format, e.g. ``compressed-tensors W4A16 int group 64``, ``gptq 4-bit g128``,
  ``GGUF Q4_1`` (the file type of a GGUF file), or ``none`` for plain floating-point weights;
* ``bits_per_weight``: stored bits per logical weight of the decoder blocks' matrices: every byte the blocks'
  tensors take (packed weights, scales, zero points, index tensors) x 8 / the number of weights the matrices
  have (for packed formats from their ``weight_shape`` tensor or the declared bits);
* ``sparsity``: share of exactly-zero values among the blocks' floating-point matrices (>= 2-D); ``None``
  where the matrices are stored packed / quantized (zeros are then not countable without dequantizing);
* ``dtypes``: number of values per stored dtype in the blocks.

Safetensors checkpoints are measured from their files (headers for dtypes and sizes, the float tensors read one at
a time for the zeros); a GGUF file from its tensor table (``pip install gguf``). ``kick report`` labels every run
that kick did not compress with this record (:func:`describe`), so a leaderboard row says what the model is.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

#: names of the decoder blocks' tensors (llama/qwen/mistral/gemma ``model.layers.N``, gpt2 ``h.N``, neox, falcon, opt)
BLOCK_PATTERN = re.compile(r"(^|\.)(layers|h|blocks|decoder\.layers)\.\d+\.")
_DTYPE_BITS = {"F64": 64, "F32": 32, "BF16": 16, "F16": 16, "F8_E4M3": 8, "F8_E5M2": 8, "I64": 64, "I32": 32,
               "I16": 16, "I8": 8, "U8": 8, "BOOL": 8, "U16": 16, "U32": 32, "U64": 64, "F8_E8M0": 8, "F4": 4}
_FLOAT = {"F64", "F32", "BF16", "F16"}


class InspectError(ValueError):
    """The checkpoint cannot be inspected (message says why)."""


def declared_format(config: dict[str, Any]) -> dict[str, Any]:
    """The quantization a ``config.json`` declares: {"format": label, "bits": w bits or None, "group": ...}."""
    q = config.get("quantization_config")
    if not isinstance(q, dict):
        return {"format": "none", "bits": None, "group": None}
    method = str(q.get("quant_method") or q.get("quantization_method") or "unknown")
    if method == "compressed-tensors":
        groups = q.get("config_groups") or {}
        group = next(iter(groups.values()), {}) if groups else {}
        w = group.get("weights") or {}
        a = group.get("input_activations") or {}
        bits, act_bits = w.get("num_bits"), (a or {}).get("num_bits")
        scheme = f"W{bits}A{act_bits or 16}" if bits else "?"
        kind = w.get("type") or "int"
        detail = f" {kind}" + (f" group {w['group_size']}" if w.get("group_size") else
                               f" per {w['strategy']}" if w.get("strategy") else "")
        if a and a.get("dynamic"):
            detail += " dynamic act"
        sparsity = q.get("sparsity_config") or {}
        if sparsity.get("format") and sparsity.get("format") != "dense":
            detail += f" + sparse {sparsity.get('sparsity_structure') or sparsity['format']}"
        return {"format": f"compressed-tensors {scheme}{detail} ({q.get('format', '?')})", "bits": bits,
                "group": w.get("group_size")}
    if method in ("gptq", "awq"):
        bits = q.get("bits") or q.get("w_bit")
        group = q.get("group_size") or q.get("q_group_size")
        return {"format": f"{method} {bits}-bit" + (f" g{group}" if group and group != -1 else ""), "bits": bits,
                "group": group}
    if method == "bitsandbytes":
        if q.get("load_in_4bit") or q.get("_load_in_4bit"):
            return {"format": f"bitsandbytes {q.get('bnb_4bit_quant_type', 'fp4')}", "bits": 4, "group": 64}
        return {"format": "bitsandbytes int8", "bits": 8, "group": None}
    if method == "fp8":
        return {"format": "fp8", "bits": 8, "group": None}
    return {"format": method, "bits": q.get("bits"), "group": q.get("group_size")}


def _safetensors_files(folder: Path) -> list[Path]:
    """The model's weight files: those the shard index names, else every ``*.safetensors`` but kick's
    ``quant_params.safetensors`` side file (a GPTQ export's scales, not part of the model)."""
    from kick_models.export import QUANT_PARAMS_FILE

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted({folder / f for f in json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()})
    else:
        files = sorted(f for f in folder.glob("*.safetensors") if f.name != QUANT_PARAMS_FILE)
    if not files:
        raise InspectError(f"{folder} holds no *.safetensors file (a .bin checkpoint: convert it with "
                           f"save_pretrained(safe_serialization=True); a GGUF file: pass gguf_file)")
    return files


def _measure_safetensors(folder: Path, bits_hint: int | None) -> dict[str, Any]:
    from safetensors import safe_open

    stored_bits = 0
    logical = 0
    zeros = 0
    float_values = 0
    dtypes: dict[str, int] = {}
    packed = False
    for path in _safetensors_files(folder):
        with safe_open(str(path), framework="pt") as f:
            names = [n for n in f.keys() if BLOCK_PATTERN.search(n)]
            for name in names:
                sl = f.get_slice(name)
                dtype, shape = sl.get_dtype(), list(sl.get_shape())
                n = math.prod(shape) if shape else 1
                dtypes[dtype] = dtypes.get(dtype, 0) + n
                stored_bits += n * _DTYPE_BITS.get(dtype, 16)
                base, _, leaf = name.rpartition(".")
                if leaf == "weight_shape":
                    logical += int(math.prod(f.get_tensor(name).tolist()))
                elif leaf in ("weight_packed", "qweight"):
                    packed = True
                    if leaf == "qweight" and bits_hint:  # GPTQ / AWQ: int32 rows pack 32 / bits weights
                        logical += n * 32 // int(bits_hint)
                elif leaf == "weight" and len(shape) >= 2:
                    if dtype in _FLOAT:
                        t = f.get_tensor(name)
                        zeros += int((t == 0).sum())
                        float_values += n
                    else:
                        packed = packed or dtype not in ("F8_E4M3", "F8_E5M2")
                    logical += n
    if logical == 0:
        raise InspectError(f"{folder}: no decoder-block weight matrices found (names like model.layers.N.*)")
    return {"bits_per_weight": stored_bits / logical, "sparsity": zeros / float_values if float_values and not packed
            else None, "dtypes": dtypes, "block_weights": logical}


def _measure_gguf(path: Path) -> dict[str, Any]:
    try:
        from gguf import GGUFReader
    except ImportError as exc:
        raise InspectError("reading a GGUF file needs the gguf package: pip install 'kick-eval[gguf]'") from exc
    reader = GGUFReader(str(path))
    stored_bits, logical = 0, 0
    types: dict[str, int] = {}
    for t in reader.tensors:
        if not BLOCK_PATTERN.search(t.name.replace("blk.", "layers.")):
            continue
        n = int(t.n_elements)
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + n
        stored_bits += int(t.n_bytes) * 8
        logical += n if len(t.shape) >= 2 else 0
    main = max(types, key=types.get) if types else "?"
    return {"format": f"GGUF {main}", "bits_per_weight": stored_bits / logical if logical else None,
            "sparsity": None, "dtypes": types, "block_weights": logical}


def inspect_checkpoint(path: str | Path, gguf_file: str | None = None) -> dict[str, Any]:
    """The measured record of a local checkpoint folder (or ``folder/gguf_file``)."""
    folder = Path(path)
    if not folder.exists():
        raise InspectError(f"{folder} does not exist (kick inspect reads local checkpoints; download a Hub model "
                           f"first, e.g. huggingface-cli download)")
    if gguf_file:
        return {"checkpoint": str(folder), "gguf_file": gguf_file, **_measure_gguf(folder / gguf_file)}
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    declared = declared_format(config)
    measured = _measure_safetensors(folder, declared["bits"])
    fmt = declared["format"]
    if fmt == "none":
        main = max(measured["dtypes"], key=measured["dtypes"].get)
        fmt = "none" if main in _FLOAT else f"undeclared {main} weights"
    return {"checkpoint": str(folder), "format": fmt, "declared_bits": declared["bits"],
            "declared_group": declared["group"], **measured}


def describe(record: dict[str, Any]) -> dict[str, Any]:
    """kick report's compression info for a checkpoint kick did not compress (kind quant / prune / dense)."""
    fmt, sparsity, bits = record["format"], record.get("sparsity"), record.get("bits_per_weight")
    if fmt != "none":
        kind, method = "quant", fmt
    elif sparsity is not None and sparsity >= 0.01:
        kind, method = "prune", "unstructured zeros"
    else:
        kind, method = "dense", "dense"
    return {"kind": kind, "method": method, "measured_sparsity": sparsity, "bits_per_weight": bits,
            "wbits": record.get("declared_bits"), "groupsize": record.get("declared_group"), "inspected": record}


def format_record(record: dict[str, Any]) -> str:
    lines = [f"checkpoint: {record['checkpoint']}" + (f" ({record['gguf_file']})" if record.get("gguf_file") else ""),
             f"format: {record['format']}"]
    if record.get("bits_per_weight") is not None:
        lines.append(f"bits per weight (decoder blocks, everything stored): {record['bits_per_weight']:.3f}")
    sp = record.get("sparsity")
    lines.append("sparsity (exact zeros in the blocks' float matrices): "
                 + ("not countable (packed / quantized storage)" if sp is None else f"{100 * sp:.2f}%"))
    lines.append(f"block weights: {record['block_weights']:,}; stored dtypes: "
                 + ", ".join(f"{k} {v:,}" for k, v in sorted(record["dtypes"].items())))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="kick inspect", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="local checkpoint folder")
    p.add_argument("--gguf_file", "--gguf-file", dest="gguf_file", help="a GGUF file inside the folder")
    p.add_argument("--json", action="store_true", help="print the record as JSON")
    args = p.parse_args(argv)
    try:
        record = inspect_checkpoint(args.checkpoint, args.gguf_file)
    except InspectError as exc:
        print(f"kick inspect: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(record, indent=1) if args.json else format_record(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
