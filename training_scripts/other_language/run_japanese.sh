#!/usr/bin/env bash
# DeepSpeed-Chat step 1, training_scripts/other_language/run_japanese.sh: mGPT on Japanese data.
set -euo pipefail
OUTPUT=${1:-./outputs/mgpt-japanese}
ZERO_STAGE=${2:-2}
mkdir -p "$(dirname "$OUTPUT")"
${SFTLIB_LAUNCHER:-deepspeed} --module sftlib.train \
   --data_path mkqa-Japanese Cohere/miracl-ja-queries-22-12 lmqg/qg_jaquad lmqg/qag_jaquad \
   --data_split 10,0,0 \
   --model_name_or_path sberbank-ai/mGPT \
   --per_device_train_batch_size 8 \
   --per_device_eval_batch_size 8 \
   --max_seq_len 512 \
   --learning_rate 9.65e-6 \
   --weight_decay 0. \
   --num_train_epochs 16 \
   --gradient_accumulation_steps 1 \
   --lr_scheduler_type cosine \
   --num_warmup_steps 0 \
   --seed 1234 \
   --zero_stage "$ZERO_STAGE" \
   --deepspeed \
   --output_dir "$OUTPUT" 2>&1 | tee "$OUTPUT.log"
