#!/usr/bin/env bash
# The oldest supported stack (ci/oldest-constraints.txt: lm-eval 0.4.9, transformers 4.56.2,
# datasets 3.6.0, torch 2.13 CPU) in its own venv, then the smoke subset listed in ci/oldest-smoke.txt:
# the literal `lm_eval --model kick-pruned` / `kick-gptq` on kick_factoid_qa, `kick sweep` of two
# configs, the judge through a real `transformers serve`, the compression driver on transformers 4.x
# blocks (bit-identical to the reference code) and MoE / Conv1D models (every expert compressed), kick-bnb,
# and the packaging / version checks.
# Called by .ci/run after the newest stack; usable alone: `bash ci/oldest-stack.sh`.
# KICK_OLDEST_VENV chooses the venv folder (default .venv-oldest); re-running only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${KICK_OLDEST_VENV:-.venv-oldest}
start=$(date +%s)
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
# torch first, pinned (an unpinned torch may be a multi-GB CUDA build), then kick + its test extra.
"$PY" -m pip install -q -c ci/oldest-constraints.txt torch==2.13.0
"$PY" -m pip install -q -c ci/oldest-constraints.txt -e ".[test]"
"$PY" -m kick_models.versions
echo "kick: oldest stack installed in $VENV in $(( $(date +%s) - start ))s"

mapfile -t SMOKE < <(grep -v '^\s*\(#\|$\)' ci/oldest-smoke.txt)
# The judge client runs on this stack; the server it talks to is the newest stack's `transformers serve`
# (4.56's serve streams SSE chunks even for non-streaming requests, which no OpenAI client accepts).
if [ -x .venv/bin/transformers ]; then
  export KICK_TEST_SERVE_BIN="$(pwd)/.venv/bin/transformers"
else
  echo "kick: no .venv (run scripts/setup.sh first): the judge-server smoke test is left out" >&2
  SMOKE+=(--deselect tests/test_judge_server.py::test_http_judge_through_transformers_serve)
fi
"$PY" -m pytest -q -p no:cacheprovider -rs "${SMOKE[@]}"
echo "kick: oldest stack smoke done in $(( $(date +%s) - start ))s"
