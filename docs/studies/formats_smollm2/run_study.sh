#!/usr/bin/env bash
# SmolLM2-135M-Instruct (GGUF Q4_1, dequantized once to float32 safetensors by `kick convert-gguf --smollm2`) in the
# formats vLLM serves (kick-quant), scored dense-relative.
#
#   bash docs/studies/formats_smollm2/run_study.sh          # from the repo root, offline (KICK_DATA_DIR)
#
# Protocol (2 CPU cores; the sweep study's protocol, docs/studies/sweep_smollm2, with fewer items):
#   * kick_factoid_qa: first N_FACTOID (60) questions of the FreebaseQA eval split, chat template on,
#     greedy, at most MAX_GEN_TOKS (16) new tokens, stop at the first newline;
#   * kick_wikitext_ppl: first N_PPL (8) windows of PPL_SEQLEN (512) tokens;
#   * calibration (GPTQ, and NVFP4's static activation global scale): NSAMPLES x CALIB_SEQLEN (32 x 512) C4 tokens;
#   * grid: dense; FP8_DYNAMIC, W8A8, W4A16 GPTQ (group_size=64: SmolLM2's 576 columns are not a multiple of
#     W4A16's 128), NVFP4A16, NVFP4, MXFP4 (compressed-tensors presets; lm_head kept); AWQ W4A16 (group_size=64)
#     beside GPTQ W4A16, and SmoothQuant W8A8 (alpha 0.85, the reference's LLaMA setting) beside plain W8A8.
set -euo pipefail
cd "$(dirname "$0")/../../.."
HERE=docs/studies/formats_smollm2
OUT=${OUT:-$HERE/runs}
CACHE=${CACHE:-${TMPDIR:-/tmp}/kick_study_formats_cache}
N_FACTOID=${N_FACTOID:-60}
N_PPL=${N_PPL:-8}
PPL_SEQLEN=${PPL_SEQLEN:-512}
MAX_GEN_TOKS=${MAX_GEN_TOKS:-16}
NSAMPLES=${NSAMPLES:-32}
CALIB_SEQLEN=${CALIB_SEQLEN:-512}
SCHEMES=${SCHEMES:-FP8_DYNAMIC,W8A8,W8A8:smoothquant=0.85,W4A16:method=gptq:group_size=64,W4A16:method=awq:group_size=64,NVFP4A16,NVFP4,MXFP4}
NICE=${NICE:-0}
TASKS=${TASKS:-kick_factoid_qa,kick_wikitext_ppl}

export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export KICK_DATA_DIR=${KICK_DATA_DIR:-$(cd .. && pwd)/shared/data}
MODEL_DIR=${MODEL_DIR:-${TMPDIR:-/tmp}/kick_smollm2_135m_instruct}
[[ -f "$MODEL_DIR/model.safetensors" ]] || kick convert-gguf --smollm2 "$MODEL_DIR"   # loads in seconds, not minutes
SAMPLES=$(python -c "import json;print(json.dumps({'kick_factoid_qa': list(range($N_FACTOID)), 'kick_wikitext_ppl': list(range($N_PPL))}))")

start=$(date +%s)
nice -n "$NICE" kick sweep \
  --model "$MODEL_DIR" --name SmolLM2-135M-Instruct \
  --output "$OUT" --cache-dir "$CACHE" --schemes "$SCHEMES" \
  --calib c4 --nsamples "$NSAMPLES" --seqlen "$CALIB_SEQLEN" --seed 0 \
  --tasks "$TASKS" --batch_size 16 --score_batch_size 4 --device cpu \
  -- --samples "$SAMPLES" --apply_chat_template --gen_kwargs "max_gen_toks=$MAX_GEN_TOKS" \
     --metadata "{\"ppl_seqlen\": $PPL_SEQLEN}" || status=$?
echo "sweep wall time: $(( $(date +%s) - start )) s"

nice -n "$NICE" kick report "$OUT" --out "$HERE/report" --html
exit "${status:-0}"
