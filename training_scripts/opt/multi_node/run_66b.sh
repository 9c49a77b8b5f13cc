#!/usr/bin/env bash
# DeepSpeed-Chat step 1, training_scripts/opt/multi_node/run_66b.sh: OPT-66B on several nodes.
# `hostfile` lists one node per line ("worker-1 slots=8"); keep --data_output_path node-local.
set -euo pipefail
OUTPUT=${1:-./outputs/opt-66b-multi-node}
ZERO_STAGE=${2:-3}
HOSTFILE=${HOSTFILE:-hostfile}
mkdir -p "$(dirname "$OUTPUT")"
${SFTLIB_LAUNCHER:-deepspeed} --hostfile "$HOSTFILE" --module sftlib.train \
   --data_path Dahoas/rm-static Dahoas/full-hh-rlhf Dahoas/synthetic-instruct-gptj-pairwise yitingxie/rlhf-reward-datasets \
   --data_split 2,4,4 \
   --model_name_or_path facebook/opt-66b \
   --per_device_train_batch_size 4 \
   --per_device_eval_batch_size 4 \
   --max_seq_len 512 \
   --learning_rate 9.65e-6 \
   --weight_decay 0.1 \
   --num_train_epochs 2 \
   --gradient_accumulation_steps 1 \
   --lr_scheduler_type cosine \
   --num_warmup_steps 0 \
   --seed 1234 \
   --gradient_checkpointing \
   --zero_stage "$ZERO_STAGE" \
   --deepspeed \
   --output_dir "$OUTPUT" 2>&1 | tee "$OUTPUT.log"
