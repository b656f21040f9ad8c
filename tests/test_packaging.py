"""Installation and lm-eval discovery: the .pth hook is lazy, cheap, and makes kick visible."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str, **env) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env, check=True)


def test_startup_hook_imports_neither_torch_nor_lm_eval():
    out = _run("import sys; print('torch' in sys.modules, 'lm_eval' in sys.modules, 'kick_models.autoload' in sys.modules)")
    assert out.stdout.split() == ["False", "False", "True"], out.stdout + out.stderr


def test_startup_hook_costs_under_20ms():
    res = subprocess.run([sys.executable, "-X", "importtime", "-c", "pass"], capture_output=True, text=True, check=True)
    lines = [line for line in res.stderr.splitlines() if line.rstrip().endswith("kick_models.autoload")]
    assert lines, "kick_models.autoload was not imported at start-up: is the package installed (pip install -e .)?"
    cumulative_us = int(re.split(r"\|", lines[0])[1])
    assert cumulative_us < 20_000, f"start-up hook took {cumulative_us} us"


def test_startup_hook_can_be_turned_off():
    out = _run("import sys; print('kick_models.autoload' in sys.modules)", KICK_NO_AUTOLOAD="1")
    assert out.stdout.strip() == "False"


def test_builtin_hf_model_still_resolves_and_kick_models_register():
    code = (
        "from lm_eval.api.registry import get_model\n"
        "print(get_model('hf').__name__)\n"
        "print(get_model('kick-pruned').__name__, get_model('kick-gptq').__name__, get_model('kick-bnb').__name__)\n"
    )
    out = _run(code).stdout.splitlines()
    assert out[0] == "HFLM"
    assert out[1].split() == ["KickPrunedLM", "KickQuantizedLM", "KickBitsAndBytesLM"]


def test_declared_entry_points_are_the_hooks_models_and_lm_eval_loads_them():
    """pyproject's ``lm_eval.models`` entry points name exactly the models the start-up hook registers, and
    lm-eval's own registry (0.4.10+ and 0.5 accept ``EntryPoint`` placeholders) materialises each to its class;
    the ``lm_eval.tasks`` entry point names the task folder the hook adds."""
    from importlib import metadata

    from kick_models.autoload import KICK_MODELS, task_yaml_dir

    models = {ep.name: ep for ep in metadata.entry_points(group="lm_eval.models") if ep.value.startswith("kick_models.")}
    assert {name: ep.value for name, ep in models.items()} == KICK_MODELS
    from lm_eval.api import registry

    lazy = getattr(registry, "model_registry", None)
    if lazy is None or not hasattr(lazy, "register"):
        pytest.skip("lm-eval 0.4.9's model registry is a plain dict (no lazy placeholders)")
    for name, ep in models.items():
        lazy.register(f"entry-point-{name}", target=ep)
        assert lazy.get(f"entry-point-{name}") is registry.get_model(name)
    tasks = [ep for ep in metadata.entry_points(group="lm_eval.tasks") if ep.name == "kick"]
    assert len(tasks) == 1 and Path(task_yaml_dir()) == Path(tasks[0].load().__file__).parent


def test_task_manager_sees_kick_tasks_without_include_path():
    code = (
        "from lm_eval.tasks import TaskManager\n"
        "tm = TaskManager(include_defaults=False)\n"
        "print('\\n'.join(tm.all_tasks))\n"
    )
    names = _run(code).stdout.split()
    assert "kick_factoid_qa" in names, names[:20]


def test_kick_tasks_only_skips_the_built_in_task_index_and_nothing_else():
    """KICK_TASKS_ONLY=1 (set by kick sweep in its children when kick's folder holds every task): the TaskManager
    indexes kick's tasks only; without it, lm-eval's built-ins are there too."""
    code = ("from lm_eval.tasks import TaskManager\n"
            "names = set(TaskManager().all_tasks)\n"
            "print('kick_factoid_qa' in names, 'hellaswag' in names, 'arc_easy' in names)\n")
    assert _run(code, KICK_TASKS_ONLY="1").stdout.split() == ["True", "False", "False"]
    assert _run(code).stdout.split() == ["True", "True", "True"]


def test_kick_cli_lists_commands():
    out = subprocess.run([sys.executable, "-m", "kick_analysis.cli", "--help"], capture_output=True, text=True, check=True)
    for name in ("eval", "judge", "sweep", "report", "compare", "demo"):
        assert f"  {name}" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "kick_analysis.cli", "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown command 'nope'" in bad.stderr


@pytest.mark.slow
def test_wheel_ships_task_yaml_and_startup_hook(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    wheel = next(tmp_path.glob("kick_eval-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "kick_autoload.pth" in names
    assert any(n.startswith("task_yaml/") and n.endswith(".yaml") for n in names)
    assert "kick_models/autoload.py" in names and "kick_models/data.py" in names
    assert {"kick_analysis/report/static/report.js", "kick_analysis/report/static/report.css"} <= set(names)
    assert not any(n.startswith("tests/") for n in names)
