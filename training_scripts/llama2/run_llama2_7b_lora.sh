#!/usr/bin/env bash
# DeepSpeed-Chat step 1, training_scripts/llama2/run_llama2_7b_lora.sh: Llama-2-7B, LoRA only, 8 GPUs.
set -euo pipefail
OUTPUT=${1:-./outputs/llama2-7b-lora}
ZERO_STAGE=${2:-3}
mkdir -p "$(dirname "$OUTPUT")"
${SFTLIB_LAUNCHER:-deepspeed} --module sftlib.train \
   --data_path Dahoas/rm-static Dahoas/full-hh-rlhf Dahoas/synthetic-instruct-gptj-pairwise yitingxie/rlhf-reward-datasets \
   --data_split 2,4,4 \
   --model_name_or_path meta-llama/Llama-2-7b-hf \
   --per_device_train_batch_size 4 \
   --per_device_eval_batch_size 4 \
   --max_seq_len 512 \
   --learning_rate 9.65e-6 \
   --weight_decay 0. \
   --num_train_epochs 4 \
   --gradient_accumulation_steps 1 \
   --lr_scheduler_type cosine \
   --num_warmup_steps 0 \
   --seed 1234 \
   --gradient_checkpointing \
   --zero_stage "$ZERO_STAGE" \
   --deepspeed \
   --lora_dim 128 \
   --lora_module_name "layers." \
   --only_optimize_lora \
   --output_dir "$OUTPUT" 2>&1 | tee "$OUTPUT.log"
