#!/usr/bin/env bash
# DeepSpeed-Chat step 1, training_scripts/opt/single_gpu/run_1.3b.sh: OPT-1.3B on one GPU with LoRA.
set -euo pipefail
OUTPUT=${1:-./outputs/opt-1.3b-single-gpu}
ZERO_STAGE=${2:-0}
mkdir -p "$(dirname "$OUTPUT")"
${SFTLIB_LAUNCHER:-deepspeed} --num_gpus 1 --module sftlib.train --model_name_or_path facebook/opt-1.3b \
   --gradient_accumulation_steps 8 --lora_dim 128 --zero_stage "$ZERO_STAGE" \
   --enable_tensorboard --tensorboard_path "${OUTPUT}_tensorboard" \
   --deepspeed --output_dir "$OUTPUT" 2>&1 | tee "$OUTPUT.log"
