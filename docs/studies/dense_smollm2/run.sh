#!/usr/bin/env bash
# Dense SmolLM2-135M-Instruct (GGUF Q4_1, dequantized to float32 by transformers) on
#   kick_factoid_qa   - the first 200 questions of the FreebaseQA eval split (--limit 200)
#   kick_wikitext_ppl - the WikiText-2 test windows of 2,048 tokens: all of them, or the first
#                       $WIKITEXT_LIMIT (the reported run used WIKITEXT_LIMIT=24: CPU time, see README.md)
# CPU, offline; KICK_DATA_DIR defaults to ../shared/data beside the repository.
#
#   bash docs/studies/dense_smollm2/run.sh        # from anywhere; CPU minutes, runs under nice
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../../.." && pwd)"
export KICK_DATA_DIR="${KICK_DATA_DIR:-$ROOT/../shared/data}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
GGUF_DIR="$(python -c 'from kick_models.gguf import smollm2_gguf; print(smollm2_gguf().parent)')"
MODEL_ARGS="pretrained=$GGUF_DIR,gguf_file=SmolLM2-135M-Instruct.Q4_1.gguf,dtype=float32"

run() {  # run <log name> <lm_eval args...>
  local name=$1; shift
  local start=$(date +%s)
  nice -n 10 lm_eval --model hf --model_args "$MODEL_ARGS" --device cpu \
    --output_path "$HERE/results" --log_samples "$@" 2>&1 | tee "$HERE/$name.log"
  echo "wall time: $(( $(date +%s) - start )) s" | tee -a "$HERE/$name.log"
}

# Greedy generation batched 16 at a time (left padding; same greedy answers up to float rounding).
[ -n "${SKIP_FACTOID:-}" ] || run factoid_qa --tasks kick_factoid_qa --limit 200 --batch_size 16
run wikitext_ppl --tasks kick_wikitext_ppl --batch_size 1 ${WIKITEXT_LIMIT:+--limit "$WIKITEXT_LIMIT"}
