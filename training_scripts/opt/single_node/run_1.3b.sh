#!/usr/bin/env bash
# DeepSpeed-Chat step 1, training_scripts/opt/single_node/run_1.3b.sh: OPT-1.3B on one 8-GPU node.
set -euo pipefail
OUTPUT=${1:-./outputs/opt-1.3b-single-node}
ZERO_STAGE=${2:-2}
mkdir -p "$(dirname "$OUTPUT")"
${SFTLIB_LAUNCHER:-deepspeed} --module sftlib.train \
   --data_path Dahoas/rm-static Dahoas/full-hh-rlhf Dahoas/synthetic-instruct-gptj-pairwise yitingxie/rlhf-reward-datasets \
   --data_split 2,4,4 \
   --model_name_or_path facebook/opt-1.3b \
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
