#!/usr/bin/env bash
# The toy OPT on two CPU ranks (fp32; one thread per rank so two ranks fit two cores). CI runs it.
set -euo pipefail
OUTPUT=${1:-./outputs/cpu-tiny}
ZERO_STAGE=${2:-0}
PYTHON=${PYTHON:-python}
mkdir -p "$(dirname "$OUTPUT")"
"$PYTHON" -m sftlib.lessons.toy --models opt
OMP_NUM_THREADS=1 ${SFTLIB_LAUNCHER:-deepspeed} --num_gpus 2 --master_port "${MASTER_PORT:-29500}" --module sftlib.train \
   --model_name_or_path toy_world/opt-tiny \
   --data_path toy_world/data \
   --data_split 10,0,0 \
   --max_seq_len 48 \
   --per_device_train_batch_size 8 \
   --per_device_eval_batch_size 16 \
   --learning_rate 1e-3 \
   --num_train_epochs 1 \
   --dtype fp32 \
   --zero_stage "$ZERO_STAGE" \
   --output_dir "$OUTPUT" 2>&1 | tee "$OUTPUT.log"
