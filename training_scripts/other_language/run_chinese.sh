#!/usr/bin/env bash
# DeepSpeed-Chat step 1, training_scripts/other_language/run_chinese.sh: BLOOM-1b1 on Chinese data.
set -euo pipefail
OUTPUT=${1:-./outputs/bloom-1b1-chinese}
ZERO_STAGE=${2:-2}
mkdir -p "$(dirname "$OUTPUT")"
${SFTLIB_LAUNCHER:-deepspeed} --module sftlib.train \
   --data_path wangrui6/Zhihu-KOL Cohere/miracl-zh-queries-22-12 Hello-SimpleAI/HC3-Chinese mkqa-Chinese \
   --data_split 10,0,0 \
   --model_name_or_path bigscience/bloom-1b1 \
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
