"""The supported lm-eval / transformers range: declared once, tested on both ends, refused clearly outside.

CI runs this file in all three stacks (.ci/run: the newest from scripts/setup.sh, the oldest from
ci/oldest-constraints.txt via ci/oldest-stack.sh, lm-eval 0.5.0.dev1 via ci/lmeval05-stack.sh).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from kick_models import versions

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _pyproject_dependencies() -> dict[str, str]:
    text = (ROOT / "pyproject.toml").read_text()
    block = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M).group(1)
    deps = {}
    for spec in re.findall(r'"([^"]+)"', block):
        name, rest = re.match(r"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?(.*)", spec).groups()
        deps[name] = rest
    return deps


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "ci" / "oldest-constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    return pins


def test_declared_range_is_the_checked_range_and_the_oldest_stack_is_its_floor():
    deps = _pyproject_dependencies()
    assert deps["lm-eval"] == versions.SUPPORTED["lm-eval"]
    assert deps["transformers"] == versions.SUPPORTED["transformers"]
    pins = _constraints()
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    for name in ("lm-eval", "transformers", "datasets"):
        floor = re.search(r">=([0-9.]+)", deps[name]).group(1)
        assert Version(pins[name]).release[:len(Version(floor).release)] == Version(floor).release, (
            f"ci/oldest-constraints.txt pins {name}=={pins[name]}, but pyproject.toml's floor is {floor}")
        assert pins[name] in SpecifierSet(deps[name])
    readme = (ROOT / "README.md").read_text()
    for name in ("lm-eval", "transformers"):
        assert versions.supported_range(name) in readme.replace("`", "")


@pytest.mark.parametrize("lm_eval,transformers,refused", [
    ("0.4.9", "4.56.0", None), ("0.4.9.2", "4.57.6", None), ("0.4.13", "5.24.0", None),
    ("0.4.14.dev0", "5.0.0rc1", None),
    ("0.5.0.dev1", "5.25.0", None), ("0.5.0", "5.24.0", None),
    ("0.4.8", "4.57.6", "lm-eval 0.4.8 is installed"), ("0.6.0", "5.24.0", "lm-eval 0.6.0 is installed"),
    ("0.6.0.dev0", "5.24.0", "lm-eval 0.6.0.dev0 is installed"),
    (None, "5.24.0", "lm-eval is not installed"), ("0.4.13", "4.55.4", "transformers 4.55.4 is installed"),
    ("0.4.13", "6.0.0", "transformers 6.0.0 is installed"),
])
def test_check_accepts_exactly_the_supported_range(lm_eval, transformers, refused):
    installed = {"lm-eval": lm_eval, "transformers": transformers}
    if refused is None:
        versions.check(installed)
        return
    with pytest.raises(versions.UnsupportedVersionError) as err:
        versions.check(installed)
    text = str(err.value)
    assert "'lm-eval>=0.4.9,<0.6'" in text and "'transformers>=4.56,<6'" in text
    assert refused in text


def test_this_environment_is_supported():
    versions.check()


def test_task_manager_sees_the_kick_tasks_on_this_lm_eval():
    code = ("import kick_tasks\n"
            "tm = kick_tasks.task_manager(include_defaults=False)\n"
            "print(' '.join(sorted(n for n in tm.all_tasks if n.startswith('kick'))))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    names = out.stdout.split()
    assert {"kick_factoid_qa", "kick_icr_qa_closed", "kick_wikitext_ppl"} <= set(names), names


@pytest.fixture()
def lm_eval_048_metadata(tmp_path):
    """A site folder whose dist-info says lm-eval 0.4.8, first on PYTHONPATH (importlib.metadata finds it first).

    Installing the real lm-eval 0.4.8 takes minutes; ci/oldest-stack.sh's notes record that run
    (its TaskConfig rejects the ``custom_dataset`` key every kick task uses).
    """
    real = metadata.distribution("lm-eval")
    info = tmp_path / "site" / "lm_eval-0.4.8.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: lm_eval\nVersion: 0.4.8\n")
    assert real.version != "0.4.8"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", "import importlib.metadata as m; print(m.version('lm-eval'))"],
                         env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0.4.8"
    return env


def _one_clear_error(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if "kick supports" in line]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert "'lm-eval>=0.4.9,<0.6'" in lines[0] and "lm-eval 0.4.8 is installed" in lines[0]


def test_lm_eval_asking_for_kick_on_unsupported_lm_eval_is_one_clear_error(lm_eval_048_metadata, tmp_path):
    proc = subprocess.run([str(BIN / "lm_eval"), "--model", "kick-pruned", "--model_args", f"pretrained={tmp_path}",
                           "--tasks", "kick_factoid_qa", "--limit", "1"],
                          env=lm_eval_048_metadata, capture_output=True, text=True, timeout=300)
    _one_clear_error(proc)


def test_kick_eval_on_unsupported_lm_eval_is_one_clear_error(lm_eval_048_metadata, tmp_path):
    proc = subprocess.run([str(BIN / "kick"), "eval", "--model", "hf", "--tasks", "kick_factoid_qa"],
                          env=lm_eval_048_metadata, capture_output=True, text=True, timeout=300)
    _one_clear_error(proc)
    assert proc.stderr.startswith("kick: error: ")


def test_unsupported_lm_eval_refuses_kick_but_leaves_plain_lm_eval_alone(lm_eval_048_metadata):
    code = (
        "import kick_tasks\n"
        "from kick_models.versions import UnsupportedVersionError\n"
        "from lm_eval.api.registry import get_model\n"
        "print(get_model('hf').__name__)\n"
        "for call in (kick_tasks.task_manager, lambda: get_model('kick-gptq')):\n"
        "    try:\n"
        "        call()\n"
        "    except UnsupportedVersionError as exc:\n"
        "        print('refused', 'lm-eval>=0.4.9,<0.6' in str(exc))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=lm_eval_048_metadata, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split("\n")[:3] == ["HFLM", "refused True", "refused True"]


# --------------------------------------------------------------------------- end to end (both stacks)


@pytest.fixture()
def run_env(tmp_path, data_dir):
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1",
               KICK_CACHE_DIR=str(tmp_path / "kick-cache"), KICK_DATA_DIR=str(data_dir))
    return env


def _run(cmd: list[str], env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc


def _results(folder: Path) -> dict:
    files = sorted(folder.rglob("results_*.json"))
    assert len(files) == 1, files
    return json.loads(files[0].read_text())


@pytest.mark.slow
def test_literal_lm_eval_kick_gptq_on_a_knowledge_task(tiny_llama_dir, calib_txt, run_env, tmp_path):
    """``lm_eval --model kick-gptq`` (no wrapper, no --include_path) runs kick_factoid_qa; the saved weights are 4-bit."""
    import torch
    from safetensors.torch import load_file

    saved = tmp_path / "gptq-saved"
    _run([str(BIN / "lm_eval"), "--model", "kick-gptq", "--model_args",
          f"pretrained={tiny_llama_dir},wbits=4,groupsize=32,calib={calib_txt},nsamples=4,seqlen=64,"
          f"save_compressed={saved}", "--device", "cpu", "--tasks", "kick_factoid_qa", "--limit", "3",
          "--output_path", str(tmp_path / "out")], run_env)
    results = _results(tmp_path / "out")
    assert results["results"]["kick_factoid_qa"]["exact_match,none"] >= 0.0
    assert results["n-samples"]["kick_factoid_qa"]["effective"] == 3  # (the test data holds 3 questions)
    weights = {}
    for file in saved.glob("*.safetensors"):
        weights.update(load_file(file))
    linears = {k: w for k, w in weights.items() if ".layers." in k and k.endswith("proj.weight")}
    assert len(linears) == 2 * 7  # tiny llama: 2 blocks x (q, k, v, o, gate, up, down)
    for name, w in linears.items():
        distinct = [torch.unique(group).numel() for group in w.reshape(-1, 32)]  # rows split into 32-column groups
        assert max(distinct) <= 16, f"{name}: a 32-column group holds {max(distinct)} distinct values (> 4 bits)"


@pytest.mark.slow
def test_kick_sweep_of_two_configs(tiny_llama_dir, calib_txt, run_env, tmp_path):
    """``kick sweep``: dense + Wanda 50% on kick_factoid_qa, each its own lm-eval results folder."""
    out = tmp_path / "sweep"
    proc = _run([str(BIN / "kick"), "sweep", "--model", str(tiny_llama_dir), "--output", str(out),
                 "--methods", "wanda", "--sparsity", "0.5", "--calib", calib_txt, "--nsamples", "4", "--seqlen", "64",
                 "--tasks", "kick_factoid_qa", "--limit", "3", "--device", "cpu"], run_env)
    manifest = json.loads((out / "sweep.json").read_text())
    assert [(c["slug"], c["status"]) for c in manifest["configs"]] == [("dense", "done"), ("wanda-s50", "done")], \
        proc.stderr[-3000:]
    for slug in ("dense", "wanda-s50"):
        results = _results(out / slug)
        assert results["n-samples"]["kick_factoid_qa"]["effective"] == 3
    assert "kick_compression" not in _results(out / "dense")["config"]
    assert _results(out / "wanda-s50")["config"]["kick_compression"]["config"]["method"] == "wanda"
