import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(Path(__file__).parent))

# Console scripts of this environment (lm_eval, kick, transformers, accelerate) are found even when
# pytest runs as `.venv/bin/python -m pytest` without activating the venv.
_BIN = str(Path(sys.executable).parent)
if _BIN not in os.environ.get("PATH", "").split(os.pathsep):
    os.environ["PATH"] = _BIN + os.pathsep + os.environ.get("PATH", "")

# Tests never touch the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if SHARED_DATA.is_dir():
    os.environ.setdefault("KICK_DATA_DIR", str(SHARED_DATA))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    from tiny import make_tiny_model_dir

    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "llama", family="llama")


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory) -> Path:
    from tiny import make_tiny_model_dir

    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "qwen2", family="qwen2")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: one intra-op thread avoids OpenMP spin-waiting on a busy 2-core machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture()
def calib_txt(tmp_path):
    """A small calibration text file (the `calib=<path>.txt` source)."""
    path = tmp_path / "calib.txt"
    path.write_text("The quick brown fox jumps over the lazy dog. Paris is the capital of France. " * 100)
    return str(path)


def pytest_terminal_summary(terminalreporter):
    """The registry-wide family test's summary: built / compressed truly / refused (reasons) / not buildable."""
    import sys

    module = sys.modules.get("test_registry_families")
    if module is not None and module.RESULTS:
        for line in module.summary_lines():
            terminalreporter.write_line(line)
