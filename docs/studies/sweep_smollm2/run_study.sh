#!/usr/bin/env bash
# SmolLM2-135M-Instruct (GGUF Q4_1, dequantized) under pruning and quantization, scored dense-relative.
#
#   bash docs/studies/sweep_smollm2/run_study.sh          # from the repo root, offline (KICK_DATA_DIR)
#
# Protocol (2 CPU cores; see README.md in this folder for every deviation from the paper):
#   * kick_factoid_qa: first N_FACTOID (200) questions of the FreebaseQA eval split, chat template on,
#     greedy, at most MAX_GEN_TOKS (16) new tokens (paper: 32), stop at the first newline;
#   * kick_wikitext_ppl: first N_PPL (32) windows of PPL_SEQLEN (512) tokens (paper: all windows of 2048);
#   * calibration: NSAMPLES x CALIB_SEQLEN (32 x 512) tokens from C4 (paper: 128 x 2048);
#   * grid: dense; magnitude, Wanda, SparseGPT at 10-60 % and 2:4; GPTQ 8/4/3-bit and RTN 4-bit, g128.
# The sweep is resumable: re-running the script skips finished configs, and adding grid points
# (e.g. SPARSITY=0:0.7:0.1 NM=2:4,4:8) only runs the new ones. Each config is one lm_eval run.
set -euo pipefail
cd "$(dirname "$0")/../../.."
HERE=docs/studies/sweep_smollm2
OUT=${OUT:-$HERE/runs}
CACHE=${CACHE:-${TMPDIR:-/tmp}/kick_study_smollm2_cache}
N_FACTOID=${N_FACTOID:-200}
N_PPL=${N_PPL:-32}
PPL_SEQLEN=${PPL_SEQLEN:-512}
MAX_GEN_TOKS=${MAX_GEN_TOKS:-16}
NSAMPLES=${NSAMPLES:-32}
CALIB_SEQLEN=${CALIB_SEQLEN:-512}
METHODS=${METHODS:-wanda,sparsegpt,magnitude,gptq,rtn}
SPARSITY=${SPARSITY:-0:0.6:0.1}
NM=${NM:-2:4}
GPTQ_BITS=${GPTQ_BITS:-8,4,3}
RTN_BITS=${RTN_BITS:-4}
NICE=${NICE:-10}

export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export KICK_DATA_DIR=${KICK_DATA_DIR:-$(cd .. && pwd)/shared/data}
GGUF_DIR=${GGUF_DIR:-$(python -c "from kick_models.gguf import smollm2_gguf; print(smollm2_gguf().parent)")}
SAMPLES=$(python -c "import json;print(json.dumps({'kick_factoid_qa': list(range($N_FACTOID)), 'kick_wikitext_ppl': list(range($N_PPL))}))")

WBITS_ARGS=()
[[ ",$METHODS," == *,gptq,* ]] && WBITS_ARGS+=(--wbits "gptq=$GPTQ_BITS")
[[ ",$METHODS," == *,rtn,* ]] && WBITS_ARGS+=(--wbits "rtn=$RTN_BITS")

start=$(date +%s)
nice -n "$NICE" kick sweep \
  --model "$GGUF_DIR" --model_args gguf_file=SmolLM2-135M-Instruct.Q4_1.gguf --name SmolLM2-135M-Instruct \
  --output "$OUT" --cache-dir "$CACHE" \
  --methods "$METHODS" --sparsity "$SPARSITY" ${NM:+--nm "$NM"} \
  ${WBITS_ARGS[@]+"${WBITS_ARGS[@]}"} --groupsize 128 \
  --calib c4 --nsamples "$NSAMPLES" --seqlen "$CALIB_SEQLEN" --seed 0 \
  --tasks kick_factoid_qa,kick_wikitext_ppl --batch_size 16 --device cpu \
  -- --samples "$SAMPLES" --apply_chat_template --gen_kwargs "max_gen_toks=$MAX_GEN_TOKS" \
     --metadata "{\"ppl_seqlen\": $PPL_SEQLEN}" || status=$?
echo "sweep wall time: $(( $(date +%s) - start )) s"

nice -n "$NICE" kick report "$OUT" --out "$HERE/report" --html
exit "${status:-0}"
