"""The ``kick`` command. Each subcommand lives in its own module; this file only dispatches.

    kick eval ...      exactly ``lm_eval``'s flags, with the kick models and tasks loaded
    kick demo          the README's main job (SmolLM2-135M dense vs Wanda 50%, offline)
    kick judge ...     judge samples files written by --log_samples / --predict_only
    kick mt-bench ...  MT-Bench turn 2 from the logged turn-1 answers (same model)
    kick sweep ...     a compression grid, resumable, one lm-eval results folder per config
    kick report ...    summary.csv, leaderboard.md and plots over lm-eval results folders
    kick compare ...   dense-relative retention / flips / McNemar between two runs
    kick convert-gguf  a GGUF file as a plain safetensors checkpoint folder
    kick inspect DIR   what a checkpoint holds: declared format, measured bits per weight and sparsity
"""

from __future__ import annotations

import importlib
import sys

SUBCOMMANDS = {
    "eval": ("kick_analysis.cli:run_eval", "run lm_eval with the kick models and tasks loaded"),
    "demo": ("kick_analysis.demo:main", "the README's main job: dense vs Wanda 50% on SmolLM2-135M, offline"),
    "judge": ("kick_tasks.judge.cli:main", "judge --log_samples files with an LLM judge"),
    "mt-bench": ("kick_tasks.mt_bench:main", "MT-Bench turn 2: continue each conversation with the same model"),
    "sweep": ("kick_analysis.sweep:main", "run a compression grid and evaluate every config"),
    "report": ("kick_analysis.report:main", "summary.csv, leaderboard.md and plots from results folders"),
    "compare": ("kick_analysis.compare:main", "dense-relative retention, flips and McNemar between two runs"),
    "convert-gguf": ("kick_models.gguf:main", "a GGUF file as a plain safetensors checkpoint folder"),
    "inspect": ("kick_models.checkpoint_info:main", "measured format, bits per weight and sparsity of a checkpoint"),
}


def run_eval(argv: list[str]) -> int:
    """``kick eval`` == ``lm_eval`` with the plugin loaded (works even without the .pth hook)."""
    from kick_models.autoload import ensure_loaded

    ensure_loaded()
    from lm_eval.__main__ import cli_evaluate

    sys.argv = ["lm_eval", *argv]
    cli_evaluate()
    return 0


def _usage() -> str:
    lines = ["usage: kick <command> [args]", "", "commands:"]
    lines += [f"  {name:<12} {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    lines += ["", "Run `kick <command> --help` for the options of a command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"kick: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    from kick_models.versions import UnsupportedVersionError, check

    try:
        check()  # one clear error on an lm-eval / transformers outside the supported range
        target, _ = SUBCOMMANDS[name]
        module_name, func_name = target.split(":")
        func = getattr(importlib.import_module(module_name), func_name)
        result = func(rest)
    except UnsupportedVersionError as exc:
        print(f"kick: error: {exc}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
