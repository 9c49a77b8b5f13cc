#!/usr/bin/env bash
# GPU smoke test: every path a GPU run takes, on one GPU with NCCL, in at most ~8 minutes, no hub access.
#
#   bench/gpu_smoke.sh              # run it (a CUDA GPU; the deepspeed launcher; the toy world is built offline)
#   bench/gpu_smoke.sh --dry-run    # print the commands only (tests/test_bench.py checks them in make test)
#
# Rows: fp16 ZeRO-0; bf16 ZeRO-2; bf16 ZeRO-3 + LoRA + gradient checkpointing; padding-free packing
# (sdpa, and FlashAttention when flash_attn is installed); SIGKILL mid-run + resume compared with the
# uninterrupted fp16 run; prompt_eval on the GPU in bf16; notebook 06's hybrid-engine demo. Models:
# ~125M parameters built from OPT-125m's (and a same-size Llama's) configuration with the toy tokenizer.
# Prints one table: samples/s, TFLOPs per device, MFU against PEAK_TFLOPS (H200/H100 bf16 dense: 989),
# peak GPU memory (nvidia-smi, sampled), pass/fail. Environment: PY, DEEPSPEED, SMOKE_OUT, PEAK_TFLOPS,
# STEP_TIMEOUT (seconds per row, default 240), SMOKE_BUDGET (seconds in all, default 480).
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
[[ "${1:-}" == "--dry-run" ]] && DRY=1
PY=${PY:-.venv/bin/python}
DEEPSPEED=${DEEPSPEED:-.venv/bin/deepspeed}
OUT=${SMOKE_OUT:-outputs/gpu_smoke}
PEAK=${PEAK_TFLOPS:-989}
LIMIT=${STEP_TIMEOUT:-240}
BUDGET=${SMOKE_BUDGET:-480}  # seconds for the whole script; rows that would start later are skipped
ROWS=0
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
DATA=(--data_path toy_world/data --data_split 10,0,0 --data_output_path "$OUT/cache")
TRAIN=(--num_train_epochs 1 --learning_rate 1e-4 --deepspeed_log_level info)

say() { printf '%s\n' "$*"; }

# row NAME CMD...: run CMD (under timeout, GPU memory sampled), record its exit status for the table.
row() {
    local name=$1; shift
    if (( DRY )); then say "$*"; return 0; fi
    local log="$OUT/$name.log" mem="$OUT/$name.mem"
    : > "$mem"
    if (( SECONDS > BUDGET )); then  # past the whole script's time budget: skip what is left, say so
        printf '{"n": %d, "name": "%s", "rc": 125, "log": "%s", "mem": "%s"}\n' $((++ROWS)) "$name" "$log" "$mem" \
            > "$OUT/$name.row.json"
        say "$name: skipped (over the ${BUDGET}s budget)"; return 0
    fi
    ( while :; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 >> "$mem" 2>/dev/null
                  sleep 0.5; done ) &
    local sampler=$!
    timeout --kill-after=15 "$LIMIT" "$@" > "$log" 2>&1  # TERM first: the launcher passes it to its ranks
    local rc=$?
    kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null
    printf '{"n": %d, "name": "%s", "rc": %d, "log": "%s", "mem": "%s"}\n' $((++ROWS)) "$name" "$rc" "$log" "$mem" \
        > "$OUT/$name.row.json"
    say "$name: rc $rc ($(tail -n 1 "$log" | cut -c1-120))"
}

train() {  # train PORT ARGS...: one rank on GPU 0 through the deepspeed launcher, NCCL
    local port=$1; shift
    printf '%s\n' "$DEEPSPEED" --num_gpus 1 --master_port "$port" --module sftlib.train "${DATA[@]}" "${TRAIN[@]}" "$@"
}

run_train() {  # run_train NAME PORT ARGS...
    local name=$1 port=$2; shift 2
    local cmd; mapfile -t cmd < <(train "$port" "$@")
    row "$name" "${cmd[@]}"
}

if (( ! DRY )); then
    command -v nvidia-smi > /dev/null || { say "error: no nvidia-smi: this script needs a CUDA GPU (try --dry-run)"; exit 2; }
    rm -rf "$OUT"; mkdir -p "$OUT"
    "$PY" -m sftlib.lessons.toy --models opt llama > /dev/null
    "$PY" bench/gpu_smoke_tools.py models "$OUT/models" || exit 1
fi
OPT="$OUT/models/opt-125m"
LLAMA="$OUT/models/llama-125m"
COMMON=(--max_seq_len 512 --per_device_train_batch_size 16)

run_train fp16_zero0 29601 --model_name_or_path "$OPT" "${COMMON[@]}" --dtype fp16 --zero_stage 0 \
    --dynamic_padding --save_steps 8 --output_dir "$OUT/fp16_zero0"
run_train bf16_zero2 29602 --model_name_or_path "$OPT" "${COMMON[@]}" --dtype bf16 --zero_stage 2 \
    --dynamic_padding --output_dir "$OUT/bf16_zero2"
run_train bf16_zero3_lora_gc 29603 --model_name_or_path "$OPT" "${COMMON[@]}" --dtype bf16 --zero_stage 3 \
    --lora_dim 64 --lora_module_name decoder.layers. --only_optimize_lora --gradient_checkpointing \
    --dynamic_padding --output_dir "$OUT/bf16_zero3_lora_gc"
run_train packing_padding_free_sdpa 29604 --model_name_or_path "$LLAMA" --max_seq_len 2048 \
    --per_device_train_batch_size 2 --dtype bf16 --zero_stage 0 --packing padding_free \
    --output_dir "$OUT/packing_padding_free_sdpa"
if (( DRY )) || [[ -d "$OUT/models/llama-125m-fa" ]]; then
    run_train packing_flatten_flash_attention 29605 --model_name_or_path "$OUT/models/llama-125m-fa" \
        --max_seq_len 2048 --per_device_train_batch_size 2 --dtype bf16 --zero_stage 0 --packing auto \
        --output_dir "$OUT/packing_flash"
fi

# Kill-and-resume: the fp16 ZeRO-0 run again, SIGKILLed once its step-8 checkpoint is complete, then resumed;
# its final weights must match the uninterrupted fp16_zero0 run's.
mapfile -t KILLED < <(train 29606 --model_name_or_path "$OPT" "${COMMON[@]}" --dtype fp16 --zero_stage 0 \
    --dynamic_padding --save_steps 8 --output_dir "$OUT/killed")
if (( DRY )); then
    say "${KILLED[*]}"
elif (( SECONDS <= BUDGET )); then
    setsid "${KILLED[@]}" > "$OUT/killed.log" 2>&1 &
    victim=$!
    for _ in $(seq 1 $((LIMIT * 10))); do
        [[ -f "$OUT/killed_checkpoints/global_step8/sftlib_checkpoint.json" ]] && break
        kill -0 "$victim" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL -- "-$victim" 2>/dev/null; wait "$victim" 2>/dev/null
fi
row killed_before_final_save test -f "$OUT/killed_checkpoints/global_step8/sftlib_checkpoint.json" \
    -a ! -e "$OUT/killed/model.safetensors"  # a complete step-8 checkpoint, and the kill before the final save
run_train resume 29607 --model_name_or_path "$OPT" "${COMMON[@]}" --dtype fp16 --zero_stage 0 \
    --dynamic_padding --save_steps 8 --output_dir "$OUT/killed" --resume_from_checkpoint "$OUT/killed_checkpoints"
row resume_equals_uninterrupted "$PY" bench/gpu_smoke_tools.py compare "$OUT/fp16_zero0" "$OUT/killed"

row prompt_eval_gpu "$PY" -m sftlib.prompt_eval --model_name_or_path_baseline "$OPT" \
    --model_name_or_path_finetune "$OUT/fp16_zero0" --dtype bf16 --max_new_tokens 16 \
    --eval_file toy_world/data/eval.json
row hybrid_engine "$PY" -m sftlib.lessons.hybrid_engine --model_name_or_path "$OPT" --dtype fp16

if (( ! DRY )); then
    say ""
    say "GPU smoke test, $(nvidia-smi --query-gpu=name --format=csv,noheader -i 0), $(date -u +%F), MFU vs $PEAK TFLOPs"
    "$PY" bench/gpu_smoke_tools.py table "$OUT" "$PEAK" | tee "$OUT/table.md"
    ! grep -qE "FAIL|SKIPPED" "$OUT/table.md"
fi
