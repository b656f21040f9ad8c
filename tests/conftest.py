import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
#: Small data shipped with the tests, laid out like the data folder (excerpts and stand-ins, see its README).
FIXTURE_DATA = Path(__file__).resolve().parent / "fixtures"
#: The real data folder: ../shared/data beside the repository, if there (``KICK_TEST_DATA=fixtures`` hides it,
#: as on a user's fresh clone: CI runs the suite so once).
REAL_DATA = SHARED_DATA if SHARED_DATA.is_dir() and os.environ.get("KICK_TEST_DATA") != "fixtures" else None
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
# Every data set a test reads comes from a local folder: the real one, else the shipped fixtures.
os.environ.setdefault("KICK_DATA_DIR", str(REAL_DATA or FIXTURE_DATA))
_DESELECTED: list[str] = []
#: The cross-stack parity tests compare this stack with another one's bin folder (ci/lmeval05-stack.sh sets it).
_CROSS_STACK: list[str] = []


def pytest_collection_modifyitems(config, items):
    """Tests that check the real data sets themselves (``shared_data`` fixture or the ``real_data`` marker)
    need the real data folder; without it (a user's fresh clone) they are deselected and said so at the end."""
    for item in items:
        if "shared_data" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.real_data)
    if not os.environ.get("KICK_REFERENCE_BIN"):
        other = [item for item in items if item.nodeid.startswith("tests/test_stack_parity.py")
                 or item.nodeid.startswith("test_stack_parity.py")]
        if other:
            config.hook.pytest_deselected(items=other)
            items[:] = [item for item in items if item not in other]
            _CROSS_STACK.extend(item.nodeid for item in other)
    if REAL_DATA is not None:
        return
    drop = [item for item in items if item.get_closest_marker("real_data")]
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = [item for item in items if not item.get_closest_marker("real_data")]
        _DESELECTED.extend(item.nodeid for item in drop)


def pytest_terminal_summary(terminalreporter):
    """The real-data tests left out (below), then the registry-wide family test's summary."""
    _registry_summary(terminalreporter)
    if _CROSS_STACK:
        terminalreporter.write_line(
            f"kick: {len(_CROSS_STACK)} cross-stack parity test(s) (tests/test_stack_parity.py) compare two stacks and "
            "need KICK_REFERENCE_BIN (the other stack's bin folder): not run here (ci/lmeval05-stack.sh runs them).")
    if _DESELECTED:
        terminalreporter.write_line(
            f"kick: {len(_DESELECTED)} test(s) check the real data sets (marker real_data) and need the real data "
            f"folder {SHARED_DATA}: not run here (CI runs them with it; `-m real_data` selects them).")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data folder (tests using it are marked ``real_data``: only collected when it exists)."""
    assert REAL_DATA is not None, "real_data tests are deselected without the real data folder"
    return REAL_DATA


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """A data folder in the real layout: the real one if present, else the shipped fixtures."""
    return REAL_DATA or FIXTURE_DATA


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    from tiny import make_tiny_model_dir

    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "llama", family="llama")


@pytest.fixture(scope="session")
def tiny_judge_dir(tmp_path_factory) -> Path:
    """A tiny llama with room for a whole judge prompt: FastChat's grading prompts alone are ~700 tokens of
    the tiny tokenizer, and `transformers serve` refuses a prompt longer than the model's positions."""
    from tiny import make_tiny_model_dir

    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "judge", family="llama", max_positions=4096)


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


def _registry_summary(terminalreporter):
    """The registry-wide family test's summary: built / compressed truly / refused (reasons) / not buildable."""
    import sys

    module = sys.modules.get("test_registry_families")
    if module is not None and module.RESULTS:
        for line in module.summary_lines():
            terminalreporter.write_line(line)
