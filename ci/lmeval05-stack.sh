#!/usr/bin/env bash
# The lm-eval 0.5 pre-release stack: lm-eval 0.5.0.dev1 (the exact pre-release, ci/lmeval05-constraints.txt)
# with the newest transformers and datasets, torch 2.13 CPU, in its own venv; then the smoke subset in
# ci/lmeval05-smoke.txt: every task family (`lm_eval --model kick-pruned --tasks 'kick_*'`, judged tasks through a
# local recording judge), every model class (kick-pruned, kick-gptq, kick-rtn, kick-bnb, kick-quant), `kick sweep` of two configs
# and `kick report`, each run on BOTH this stack and the newest 0.4 stack (.venv from scripts/setup.sh, lm-eval
# 0.4.13) with equal metric values required (tests/test_stack_parity.py), plus the version / packaging checks.
# Called by .ci/run after the other stacks (it needs .venv as the reference); usable alone:
# `bash scripts/setup.sh && bash ci/lmeval05-stack.sh`.
# KICK_LMEVAL05_VENV chooses the venv folder (default .venv-lmeval05); re-running only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${KICK_LMEVAL05_VENV:-.venv-lmeval05}
start=$(date +%s)
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
# torch first, pinned (an unpinned torch may be a multi-GB CUDA build), then lm-eval 0.5 and kick + its test extra
# (a pre-release is only chosen when pinned: the constraints file pins it).
"$PY" -m pip install -q -c ci/lmeval05-constraints.txt torch==2.13.0
"$PY" -m pip install -q -c ci/lmeval05-constraints.txt "lm-eval[hf]" -e ".[test]"
"$PY" -m kick_models.versions
echo "kick: lm-eval 0.5 stack installed in $VENV in $(( $(date +%s) - start ))s"

mapfile -t SMOKE < <(grep -v '^\s*\(#\|$\)' ci/lmeval05-smoke.txt)
if [ -x .venv/bin/lm_eval ]; then
  export KICK_REFERENCE_BIN="$(pwd)/.venv/bin"   # the newest 0.4 stack: tests/test_stack_parity.py's reference
else
  echo "kick: no .venv (run scripts/setup.sh first): the cross-stack parity tests would be skipped" >&2
  exit 1
fi
"$PY" -m pytest -q -p no:cacheprovider -rs "${SMOKE[@]}"
echo "kick: lm-eval 0.5 stack smoke done in $(( $(date +%s) - start ))s"
