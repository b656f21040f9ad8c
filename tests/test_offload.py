"""Models bigger than the device: accelerate-offloaded blocks / shell compressed by every method (issue 18).

Every case compresses a tiny llama once plainly (the reference) and once with parts of it offloaded behind
accelerate hooks -- to disk through ``from_pretrained(device_map=..., offload_folder=...)`` (weights then read
straight from the source ``model.safetensors``) or to CPU RAM with ``accelerate.cpu_offload``. The test then
saves the offloaded model with ``save_pretrained`` and counts, from that file, every block's sparsity or the
distinct values per quantization group itself; the saved weights and the logits must be bit-identical to the
reference (same arithmetic on CPU, so the stated tolerance is zero); the source checkpoint's bytes unchanged.
"""

from __future__ import annotations

import hashlib

import pytest
import torch
from safetensors.torch import load_file
from tiny import make_tiny_model_dir

from kick_models import prune, quantize
from kick_models.cache import CompressionCache, verify_weights
from kick_models.compress import placement
from kick_models.compress.config import CompressionConfigError

LAYERS = 4
GROUP = 16
WBITS = 3
METHODS = {  # name -> (api function, kwargs)
    "magnitude": (prune, dict(method="magnitude", sparsity=0.5)),
    "wanda": (prune, dict(method="wanda", sparsity=0.5)),
    "sparsegpt": (prune, dict(method="sparsegpt", sparsity=0.5)),
    "wanda-2:4": (prune, dict(method="wanda", sparsity_type="2:4")),
    "gptq": (quantize, dict(method="gptq", wbits=WBITS, groupsize=GROUP)),
    "rtn": (quantize, dict(method="rtn", wbits=WBITS, groupsize=GROUP)),
}
CALIBRATED = {"wanda", "sparsegpt", "wanda-2:4", "gptq"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    path = make_tiny_model_dir(tmp_path_factory.mktemp("src") / "llama", family="llama", layers=LAYERS)
    return path


def sha(path) -> str:
    return hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()


def load_plain(path, dtype=torch.float32):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()


def load_disk(path, offload_folder, disk: list[str], dtype=torch.float32):
    """``disk`` module names go to the "disk" device (accelerate hooks, values on meta); the rest on CPU."""
    from transformers import AutoModelForCausalLM

    device_map = {"model.embed_tokens": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu",
                  **{f"model.layers.{i}": "cpu" for i in range(LAYERS)}}
    device_map.update(dict.fromkeys(disk, "disk"))
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, device_map=device_map,
                                                offload_folder=str(offload_folder)).eval()


def load_cpu_offloaded(path, modules: list[str]):
    """``modules`` offloaded to CPU RAM behind accelerate hooks (``cpu_offload``'s hooks, without its extra
    io hook, so that accelerate's ``get_state_dict_offloaded_model`` can save the model)."""
    from accelerate.hooks import attach_align_device_hook

    model = load_plain(path)
    for name in modules:
        module = model.get_submodule(name)
        state = {n: p.to("cpu") for n, p in module.state_dict().items()}
        attach_align_device_hook(module, execution_device=torch.device("cpu"), offload=True, weights_map=state)
    return model


def load_dispatched(path):
    """Every module behind accelerate's dispatch hooks (as on a multi-GPU split), nothing offloaded."""
    from accelerate import dispatch_model

    model = load_plain(path)
    device_map = {name: "cpu" for name in ("model.embed_tokens", "model.norm", "model.rotary_emb", "lm_head")}
    device_map.update({f"model.layers.{i}": "cpu" for i in range(LAYERS)})
    return dispatch_model(model, device_map=device_map, main_device="cpu", force_hooks=True)


def saved_state(model, folder) -> dict[str, torch.Tensor]:
    """What ``save_pretrained`` writes (a CPU-offloaded model without a device map passes accelerate's state dict)."""
    if getattr(model, "hf_device_map", None):
        model.save_pretrained(folder)
    else:
        from accelerate.utils.modeling import get_state_dict_offloaded_model

        model.save_pretrained(folder, state_dict=get_state_dict_offloaded_model(model))
    return load_file(str(folder / "model.safetensors"))


def run(method: str, model, tokens):
    fn, kwargs = METHODS[method]
    extra = {"calibration": tokens} if method in CALIBRATED else {}
    return fn(model, None, progress=False, **extra, **kwargs)


def check_counts(method: str, state: dict[str, torch.Tensor]) -> None:
    """Every block's compression counted from the saved tensors (not from kick's report)."""
    for i in range(LAYERS):
        weights = {k: v for k, v in state.items() if k.startswith(f"model.layers.{i}.") and v.dim() == 2}
        assert len(weights) == 7, sorted(weights)
        for name, w in weights.items():
            if method in ("magnitude", "wanda", "sparsegpt"):
                zeros = (w == 0).float().mean().item()
                assert 0.5 <= zeros < 0.52, (name, zeros)
            elif method == "wanda-2:4":
                groups = (w.reshape(w.shape[0], -1, 4) == 0).sum(-1)
                assert bool((groups >= 2).all()), name
            else:
                for row in w:
                    for g in row.split(GROUP):
                        assert g.unique().numel() <= 2 ** WBITS, name


def reference(method: str, source, tokens, cache: dict):
    if method not in cache:
        model = load_plain(source)
        run(method, model, tokens)
        cache[method] = (model.state_dict(), model(tokens[:2]).logits)
    return cache[method]


_REFERENCE: dict = {}

PLACEMENTS = {
    "disk-blocks": lambda src, tmp: load_disk(src, tmp / "offload", ["model.layers.1", "model.layers.3"]),
    "cpu-blocks": lambda src, tmp: load_cpu_offloaded(src, ["model.layers.0", "model.layers.2"]),
    "disk-shell": lambda src, tmp: load_disk(src, tmp / "offload", ["model.embed_tokens", "model.norm"]),
    "cpu-shell": lambda src, tmp: load_cpu_offloaded(src, ["model.embed_tokens", "model.norm"]),
    "dispatched": lambda src, tmp: load_dispatched(src),
}
CASES = [(m, p) for m in METHODS for p in ("disk-blocks", "cpu-blocks")] + [
    ("sparsegpt", "disk-shell"), ("gptq", "cpu-shell"), ("wanda", "cpu-shell"), ("rtn", "disk-shell"),
    ("sparsegpt", "dispatched"), ("gptq", "dispatched")]


@pytest.mark.parametrize(("method", "where"), CASES)
def test_offloaded_model_compressed_in_every_block(method, where, source, tmp_path):
    before = sha(source)
    tokens = torch.randint(0, 300, (4, 24), generator=torch.Generator().manual_seed(0))
    ref_state, ref_logits = reference(method, source, tokens, _REFERENCE)
    model = PLACEMENTS[where](source, tmp_path)
    assert placement.is_dispatched(model)
    meta = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    assert meta or where == "dispatched", "the placement offloaded nothing"
    run(method, model, tokens)
    assert all(p.device.type == "meta" for n, p in model.named_parameters() if n in meta), "offloaded again after"
    assert torch.equal(model(tokens[:2]).logits, ref_logits)
    state = saved_state(model, tmp_path / "saved")
    check_counts(method, state)
    for name, value in ref_state.items():
        if name in state:
            assert torch.equal(state[name], value), name
    assert sha(source) == before, "the source checkpoint was written to"
    store = placement.offload_folder(model)
    if where.startswith("disk") and any(n.startswith("model.layers.") for n in meta):
        assert store is not None and not str(store).startswith(str(source))
    if where.startswith("cpu"):
        assert store is None  # CPU-offloaded weights are written back to their RAM map


def test_measure_only_and_hashing_of_an_offloaded_model(source, tmp_path):
    from kick_models.cache import tensors_identity

    plain = load_plain(source)
    model = load_disk(source, tmp_path / "offload", ["model.layers.2", "model.norm", "model.embed_tokens"])
    assert tensors_identity(model) == tensors_identity(plain)
    report = prune(model, None, method="wanda", sparsity=0, progress=False)
    expected = sum(p.numel() for n, p in plain.named_parameters() if n.startswith("model.layers.") and p.dim() == 2)
    assert sum(s.numel for s in report.layers) == expected
    assert report.measured_sparsity() == 0.0


def test_cache_restore_onto_offloaded_model(source, tmp_path):
    tokens = torch.randint(0, 300, (4, 24), generator=torch.Generator().manual_seed(1))
    cache = CompressionCache(tmp_path / "cache")
    plain = load_plain(source)
    report = run("sparsegpt", plain, tokens)
    assert cache.store("k" * 64, plain, report, {"test": 1}) is not None
    cached = load_file(str(cache.entry_dir("k" * 64) / "weights.safetensors"))
    for where in ("disk-blocks", "cpu-blocks"):
        model = PLACEMENTS[where](source, tmp_path / where)
        with pytest.raises(RuntimeError, match="did not take"):
            verify_weights(model, cached)  # dense offloaded weights are not the cached ones
        assert cache.load_into("k" * 64, model) is not None  # writes back + verifies
        state = saved_state(model, tmp_path / where / "saved")
        for name, value in cached.items():
            assert torch.equal(state[name], value), (where, name)
        assert torch.equal(model(tokens[:2]).logits, plain(tokens[:2]).logits)


@pytest.mark.parametrize("device", ["meta", "disk", "cuda:x", "fpga"])
def test_compress_device_must_hold_data(device, source):
    model = load_plain(source)
    with pytest.raises(CompressionConfigError, match="cpu, cuda"):
        prune(model, None, method="magnitude", sparsity=0.5, device=device, progress=False)
    from kick_models.loadtime import parse_device

    with pytest.raises(CompressionConfigError, match="compress_device"):
        parse_device(device)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_blocks_offloaded_to_disk(dtype, source, tmp_path):
    """bf16 / fp16 blocks written back in accelerate's offload format (bf16 stored as int16) stay exact."""
    tokens = torch.randint(0, 300, (4, 24), generator=torch.Generator().manual_seed(2))
    plain = load_plain(source, dtype)
    prune(plain, None, method="sparsegpt", sparsity=0.5, calibration=tokens, progress=False)
    model = load_disk(source, tmp_path / "offload", ["model.layers.1", "model.layers.2"], dtype)
    prune(model, None, method="sparsegpt", sparsity=0.5, calibration=tokens, progress=False)
    state = saved_state(model, tmp_path / "saved")
    for name, value in plain.state_dict().items():
        assert state[name].dtype == dtype and torch.equal(state[name], value), name
    logits = model(tokens[:1]).logits
    assert torch.isfinite(logits).all() and torch.equal(logits, plain(tokens[:1]).logits)


def test_save_compressed_of_a_cpu_offloaded_model(source, tmp_path):
    """kick's export of a model offloaded by accelerate hooks alone (no ``hf_device_map``) holds the real weights."""
    from kick_models.export import save_compressed

    tokens = torch.randint(0, 300, (4, 24), generator=torch.Generator().manual_seed(3))
    plain = load_plain(source)
    prune(plain, None, method="wanda", sparsity=0.5, calibration=tokens, progress=False)
    model = PLACEMENTS["cpu-blocks"](source, tmp_path)
    report = prune(model, None, method="wanda", sparsity=0.5, calibration=tokens, progress=False)
    saved = load_file(str(save_compressed(model, None, report, tmp_path / "export") / "model.safetensors"))
    for name, value in plain.state_dict().items():
        assert torch.equal(saved[name], value), name
