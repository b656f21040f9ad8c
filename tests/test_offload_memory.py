"""Calibration memory (issue 18): the batch-size budget counts stored inputs/outputs and Hessians, and a CUDA
out-of-memory error during calibration is retried with half the batch.

No GPU here: the out-of-memory error is raised by a real forward pre-hook on a module of a real tiny llama
(``torch.OutOfMemoryError``, the exception CUDA's allocator raises) whenever that module sees a batch larger
than 2 samples, i.e. what a device with room for two samples would do."""

from __future__ import annotations

import pytest
import torch

from fresh_process import ran_in_fresh_process
from tiny import make_tiny_model

from kick_models import prune
from kick_models.compress import memory

TOKENS = torch.randint(0, 300, (4, 24), generator=torch.Generator().manual_seed(0))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _room_for_two(module: torch.nn.Module, calls: list[int], only_call: int | None = None):
    def pre_hook(mod, args, kwargs):
        x = args[0] if args else next(iter(kwargs.values()))
        calls.append(x.shape[0])
        if x.shape[0] > 2 and (only_call is None or len(calls) == only_call):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated: 2 samples fit)")

    return module.register_forward_pre_hook(pre_hook, with_kwargs=True)


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
@pytest.mark.parametrize("where", ["capture", "block"])
def test_out_of_memory_retries_with_half_the_batch(method, where):
    reference = make_tiny_model("llama", layers=2)
    prune(reference, None, method=method, sparsity=0.5, calibration=TOKENS, batch_size=2, progress=False)
    model = make_tiny_model("llama", layers=2)
    calls: list[int] = []
    module = model.model.embed_tokens if where == "capture" else model.model.layers[0].self_attn
    handle = _room_for_two(module, calls)
    prune(model, None, method=method, sparsity=0.5, calibration=TOKENS, batch_size=4, progress=False)
    handle.remove()
    assert calls[0] == 4 and 4 not in calls[1:] and set(calls[1:]) == {2}, calls
    # every pass after the retry saw the same batches as a run started with batch_size=2: bit-identical
    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), name


def test_out_of_memory_producing_block_outputs_is_retried():
    reference = make_tiny_model("llama", layers=2)
    prune(reference, None, method="wanda", sparsity=0.5, calibration=TOKENS, batch_size=4, progress=False)
    model = make_tiny_model("llama", layers=2)
    calls: list[int] = []
    # call 1: block 0 runs for real in the capture (its own output), call 2 calibrates, call 3 = outputs
    handle = _room_for_two(model.model.layers[0].mlp, calls, only_call=3)
    prune(model, None, method="wanda", sparsity=0.5, calibration=TOKENS, batch_size=4, progress=False)
    handle.remove()
    assert calls == [4, 4, 4, 2, 2], calls
    # block 0 compressed from the same single batch of 4; its outputs then produced in two halves
    for name in ("model.layers.0.mlp.down_proj.weight", "model.layers.0.self_attn.q_proj.weight"):
        assert torch.equal(model.get_parameter(name), reference.get_parameter(name))
    out, ref = model(TOKENS).logits, reference(TOKENS).logits
    assert torch.allclose(out, ref, atol=1e-4), (out - ref).abs().max()


def test_halving_stops_at_one_sample():
    exc = torch.OutOfMemoryError("CUDA out of memory")
    with pytest.raises(torch.OutOfMemoryError):
        memory.halve_batches([torch.zeros(1, 3, 8)] * 2, [[((), {})] * 2], 0, "testing", exc)
    inps, calls = memory.halve_batches([torch.zeros(3, 5, 8)], [[((), {"mask": torch.ones(3, 1, 5, 5),
                                                                     "pos": torch.arange(5)})]], 0, "testing", exc)
    assert [x.shape[0] for x in inps] == [2, 1]
    assert [c[1]["mask"].shape[0] for c in calls[0]] == [2, 1]
    assert all(c[1]["pos"].shape == (5,) for c in calls[0])


def test_statistics_budget_counts_hessians_per_weight_and_expert():
    model = make_tiny_model("llama", layers=1, hidden=64, intermediate=128)
    hessians, widest, block = memory.block_statistics_bytes(model.model.layers[0])
    # q, k, v, o, gate, up read 64 inputs; down_proj reads 128
    assert hessians == 6 * 64 * 64 * 4 + 128 * 128 * 4
    assert widest == 64 * 128 * 4 * 3
    assert block == sum(p.numel() * 4 for p in model.model.layers[0].parameters())
    experts = torch.nn.Module()
    experts.down_proj = torch.nn.Parameter(torch.zeros(8, 64, 128))  # fused [experts, out, in]
    assert memory.block_statistics_bytes(experts)[0] == 8 * 128 * 128 * 4


# --------------------------------------------------------------------------- host memory over the blocks (issue 27)

GROWTH_BLOCKS = 12
#: Tolerated growth of the anonymous memory per block, as a share of one block's fp32 weights (11 MiB here):
#: before issue 27 every compressed disk-offloaded block left about its whole weights behind (copy-on-write
#: pages of the checkpoint's memory map) plus freed chunks glibc kept; a leak of a fifth of a block still fails.
GROWTH_TOLERANCE = 0.2


def _rss_anon() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssAnon:"))


def _slope(values: list[float]) -> float:
    n = len(values)
    mx, my = (n - 1) / 2, sum(values) / n
    return sum((i - mx) * (v - my) for i, v in enumerate(values)) / sum((i - mx) ** 2 for i in range(n))


@pytest.fixture(scope="module")
def wide_llama(tmp_path_factory):
    from tiny import make_tiny_model_dir

    return make_tiny_model_dir(tmp_path_factory.mktemp("wide") / "llama", family="llama", hidden=512,
                               intermediate=1408, layers=GROWTH_BLOCKS)


def _load_disk_offloaded(path, offload_folder):
    from transformers import AutoModelForCausalLM

    device_map = {"model.embed_tokens": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu",
                  **{f"model.layers.{i}": "disk" for i in range(GROWTH_BLOCKS)}}
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, device_map=device_map,
                                                offload_folder=str(offload_folder)).eval()


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/status"), reason="reads /proc (Linux)")
@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_anonymous_memory_does_not_grow_with_the_blocks(method, wide_llama, tmp_path):
    """Every decoder block on disk; RssAnon read from /proc by a forward pre-hook each time a block runs while it
    is compressed (after the capture pass): the per-block peaks must not grow with the block index."""
    model = _load_disk_offloaded(wide_llama, tmp_path / "offload")
    layers = model.model.layers
    block_bytes = sum(p.numel() * 4 for p in layers[0].parameters())
    calls = [0] * GROWTH_BLOCKS
    peaks = [0] * GROWTH_BLOCKS

    def pre_hook(index):
        def hook(module, args):
            calls[index] += 1
            if calls[index] > 1:  # the first call is the capture pass (one calibration batch)
                peaks[index] = max(peaks[index], _rss_anon())
        return hook

    handles = [layer.register_forward_pre_hook(pre_hook(i)) for i, layer in enumerate(layers)]
    tokens = torch.randint(0, 300, (4, 32), generator=torch.Generator().manual_seed(0))
    report = prune(model, None, method=method, sparsity=0.5, calibration=tokens, batch_size=4, progress=False)
    for h in handles:
        h.remove()
    assert all(c >= 2 for c in calls[:-1]), calls  # every block really ran while it was compressed
    assert report.summary()["measured_sparsity"] == pytest.approx(0.5, abs=0.01)
    slope = _slope(peaks[:-1])  # the last block is not run again (no next block needs its outputs)
    assert slope < GROWTH_TOLERANCE * block_bytes, (
        f"RssAnon grows by {slope / 2**20:.2f} MiB per block (tolerance {GROWTH_TOLERANCE * block_bytes / 2**20:.2f}"
        f" MiB, one block = {block_bytes / 2**20:.1f} MiB); per-block peaks in MiB: "
        f"{[round(p / 2**20) for p in peaks]}")


class _PeakRssAnon:
    """The highest RssAnon of this process while the ``with`` block runs, sampled by a thread every 2 ms."""

    def __enter__(self):
        import threading

        self.start = self.peak = _rss_anon()
        self._done = threading.Event()

        def run():
            while not self._done.wait(0.002):
                self.peak = max(self.peak, _rss_anon())

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_anon())
        self.growth = self.peak - self.start


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/status"), reason="reads /proc (Linux)")
def test_cache_store_restore_and_save_hold_one_module_at_a_time(wide_llama, tmp_path):
    """Cache store, a cache restore onto a disk-offloaded model and save_compressed of it each need a few weights'
    worth of anonymous memory, not the model's (12 blocks: holding every compressed weight at once, as a single
    safetensors dict or one 50 GB save_pretrained shard would, is 12 blocks' worth and fails)."""
    from safetensors.torch import load_file

    from kick_models.cache import CompressionCache
    from kick_models.export import save_compressed

    model = _load_disk_offloaded(wide_llama, tmp_path / "offload-a")
    block_bytes = sum(p.numel() * 4 for p in model.model.layers[0].parameters())
    tokens = torch.randint(0, 300, (4, 32), generator=torch.Generator().manual_seed(0))
    report = prune(model, None, method="wanda", sparsity=0.5, calibration=tokens, batch_size=4, progress=False)
    cache = CompressionCache(tmp_path / "cache")
    with _PeakRssAnon() as store:
        cache.store("k" * 64, model, report, {"test": 1})
    del model

    fresh = _load_disk_offloaded(wide_llama, tmp_path / "offload-b")
    with _PeakRssAnon() as restore:
        assert cache.load_into("k" * 64, fresh) is not None
    with _PeakRssAnon() as save:
        save_compressed(fresh, None, report, tmp_path / "saved")

    bound = 3 * block_bytes  # a handful of weights in flight; the whole model is 12 blocks
    for what, peak in (("cache store", store), ("cache restore", restore), ("save_compressed", save)):
        assert peak.growth < bound, f"{what}: RssAnon grew by {peak.growth / 2**20:.1f} MiB (bound {bound / 2**20:.1f})"
    # and what was saved is the compressed model: the cache entry's weights, counted from the files
    entry = load_file(str(cache.entry_dir("k" * 64) / "weights.safetensors"))
    saved = {k: v for f in sorted((tmp_path / "saved").glob("model*.safetensors")) for k, v in load_file(str(f)).items()}
    assert len(entry) == GROWTH_BLOCKS * 7
    for key, value in entry.items():
        assert torch.equal(saved[key], value), key
        assert (value == 0).float().mean().item() == pytest.approx(0.5, abs=0.01), key


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/status"), reason="reads /proc (Linux)")
def test_phase_memory_sees_a_known_allocation_and_leaves_no_thread(request):
    """kick's per-phase record (kick_compression.memory) against an allocation of a known size: 200 MiB of
    touched pages held for 0.2 s inside the phase must show in its peak RssAnon, and a PhaseMemory dropped with a
    phase still open (a failed run) must not leave its sampling thread behind."""
    import gc
    import threading
    import time

    if ran_in_fresh_process(request):  # resident memory: not after other tests' allocations
        return
    from kick_models.compress.host_memory import PhaseMemory

    memory = PhaseMemory()
    with memory.phase("hold"):
        block = torch.ones(200 * 2**20 // 4)  # 200 MiB written: resident
        time.sleep(0.2)
        del block
    record = memory.record()["phases"]["hold"]
    assert record["peak_rss_anon_mib"] - record["rss_anon_start_mib"] >= 190, record
    assert record["rss_anon_end_mib"] < record["peak_rss_anon_mib"] - 150, record  # freed again
    memory.start("left open")
    del memory
    gc.collect()
    time.sleep(0.2)
    assert not any(t.name == "kick-host-memory" for t in threading.enumerate())
