"""The lm-eval and transformers versions kick supports, and one clear error outside them.

The range is the one CI runs (``.ci/run``): the newest 0.4 stack from ``scripts/setup.sh``, the
oldest supported stack pinned in ``ci/oldest-constraints.txt`` and the lm-eval 0.5 pre-release stack
(``ci/lmeval05-stack.sh``). Keep them in step with ``pyproject.toml``. Only installed-package
metadata is read here: no lm_eval, transformers or torch import, so the check costs well under a
millisecond after the first call.
"""

from __future__ import annotations

import functools
import sys
from importlib import metadata

#: distribution name -> supported range. The same bounds as pyproject.toml's dependencies.
SUPPORTED = {
    "lm-eval": ">=0.4.9,<0.6",
    "transformers": ">=4.56,<6",
}
#: The three stacks CI tests (the README's "Supported versions" section lists them too).
TESTED_STACKS = {
    "oldest": "lm-eval 0.4.9, transformers 4.56.2, datasets 3.6.0 (ci/oldest-constraints.txt)",
    "newest": "lm-eval 0.4.13, transformers 5.x, datasets 5.x (scripts/setup.sh)",
    "lm-eval 0.5": "lm-eval 0.5.0.dev1, the newest transformers 5.x and datasets 5.x (ci/lmeval05-stack.sh)",
}


class UnsupportedVersionError(RuntimeError):
    """lm-eval or transformers is outside the range kick supports."""


def supported_range(name: str) -> str:
    return f"{name}{SUPPORTED[name]}"


def problems(installed: dict[str, str | None] | None = None) -> list[str]:
    """One line per package outside its range (``installed``: name -> version or None; default: this env)."""
    if installed is None:
        return list(_installed_problems())
    from packaging.specifiers import SpecifierSet

    found = []
    for name, spec in SUPPORTED.items():
        version = installed.get(name)
        if version is None:
            found.append(f"{name} is not installed")
        elif not SpecifierSet(spec).contains(version, prereleases=True):
            found.append(f"{name} {version} is installed")
    return found


@functools.lru_cache(maxsize=1)
def _installed_problems() -> tuple[str, ...]:
    installed = {}
    for name in SUPPORTED:
        try:
            installed[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed[name] = None
    return tuple(problems(installed))


def message(found: list[str]) -> str:
    ranges = " and ".join(f"'{supported_range(n)}'" for n in SUPPORTED)
    return (f"kick supports {ranges}, but {'; '.join(found)}. "
            f"Install a supported version, e.g. pip install 'lm-eval[hf]{SUPPORTED['lm-eval']}' "
            f"'{supported_range('transformers')}' "
            f"(tested stacks: {'; '.join(TESTED_STACKS.values())}).")


def check(installed: dict[str, str | None] | None = None) -> None:
    """Raise :class:`UnsupportedVersionError` naming the supported range if a package is outside it."""
    found = problems(installed)
    if found:
        raise UnsupportedVersionError(message(found))


def refuse_kick_command_line(argv: list[str]) -> None:
    """On an unsupported stack, stop an ``lm_eval`` command line that asks for a kick model or task."""
    if kick_requested(argv):
        found = problems()
        if found:
            print(f"error: {message(found)}", file=sys.stderr)
            raise SystemExit(2)


def kick_requested(argv: list[str]) -> bool:
    """True when ``--model`` names a kick model or ``--tasks`` a kick task (``kick_*``)."""
    flags = {"--model": "model", "-m": "model", "--tasks": "tasks", "-t": "tasks"}
    values: dict[str, list[str]] = {"model": [], "tasks": []}
    args = list(argv[1:])
    for i, arg in enumerate(args):
        flag, eq, value = arg.partition("=")
        if flag in flags and eq:
            values[flags[flag]].append(value)
        elif arg in flags and i + 1 < len(args):
            values[flags[arg]].append(args[i + 1])
    models = [m for m in values["model"] if m.startswith("kick-")]
    tasks = [t for v in values["tasks"] for t in v.split(",") if t.strip().startswith("kick")]
    return bool(models or tasks)


def describe() -> str:
    """One line: the installed versions of the packages that make a stack."""
    parts = []
    for name in ("lm-eval", "transformers", "datasets", "torch", "accelerate", "bitsandbytes"):
        try:
            parts.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{name} (not installed)")
    return ", ".join(parts)


def main() -> int:
    """``python -m kick_models.versions``: print this stack; exit 2 with the error if it is unsupported."""
    print(f"kick stack: {describe()} (python {sys.version.split()[0]})")
    try:
        check()
    except UnsupportedVersionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
