#!/usr/bin/env bash
# Issue 25 study: dense vs Wanda 50% vs GPTQ 4-bit vs two formats vLLM serves (kick-quant FP8_DYNAMIC, NVFP4A16)
# on SmolLM2-135M-Instruct (the demo model, GGUF Q4_1
# dequantized to float32), demo data (KICK_DATA_DIR unset -> kick_analysis/demo_data), through kick sweep:
# the dense config writes the divergence reference, the others compare with it. Then kick report.
# Usage: bash docs/studies/divergence_smollm2/run_study.sh [OUT]   (default runs/divergence_study)
set -euo pipefail
OUT=${1:-runs/divergence_study}
PY=${PYTHON:-python}
# the GGUF dequantized once into a float32 safetensors folder (the same weights every config would dequantize)
M=${MODEL_DIR:-${TMPDIR:-/tmp}/kick_smollm2_135m_instruct}
[[ -f "$M/model.safetensors" ]] || $PY -m kick_analysis.cli convert-gguf --smollm2 "$M"
export KICK_DATA_DIR=$($PY -c "from kick_analysis.demo import DEMO_DATA_DIR; print(DEMO_DATA_DIR)")
$PY -m kick_analysis.cli sweep --model "$M" --name SmolLM2-135M-Instruct \
  --model_args dtype=float32 \
  --output "$OUT/sweep" --methods wanda,gptq --sparsity 0.5 --wbits 4 --groupsize 128 \
  --schemes "${SCHEMES:-FP8_DYNAMIC,NVFP4A16}" \
  --calib c4 --nsamples 32 --seqlen 512 \
  --tasks kick_factoid_qa,kick_wikitext_ppl --limit "${LIMIT:-30}" --batch_size 16 --device cpu --jobs "${JOBS:-1}" \
  -- --gen_kwargs max_gen_toks=16 --metadata '{"ppl_seqlen": 512}' --apply_chat_template
$PY -m kick_analysis.cli report "$OUT/sweep" --out "$OUT/report"
