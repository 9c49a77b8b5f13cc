#!/usr/bin/env bash
# DeepSpeed-Chat step 1, evaluation_scripts/run_prompt.sh: baseline vs fine-tuned generations.
# Usage: bash evaluation_scripts/run_prompt.sh BASELINE FINETUNED [greedy|beam|multinomial|diverse_beam|contrastive]
set -euo pipefail
${PYTHON:-python} -m sftlib.prompt_eval \
    --model_name_or_path_baseline "$1" \
    --model_name_or_path_finetune "$2" \
    --strategy "${3:-greedy}"
