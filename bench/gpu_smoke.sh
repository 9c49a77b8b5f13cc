#!/usr/bin/env bash
# GPU smoke test: every path a GPU run takes, on one GPU with NCCL, in about 8 minutes, no hub access.
#
#   bench/gpu_smoke.sh              # run it, from a fresh clone too (make gpu-smoke runs this)
#   bench/gpu_smoke.sh --dry-run    # print the commands only (tests/test_bench.py checks them in make test)
#
# 1. Environment. With PY unset (and no active virtualenv/conda env) it uses .venv, creating it when missing
#    (python3.11 -m venv .venv; pip install -e .; a few minutes, once; log in outputs/gpu_smoke_install.log).
#    pip takes torch==2.13.0 from PyPI, whose Linux x86_64 wheel is the CUDA build (its CUDA runtime comes
#    as nvidia-* wheels: no CUDA toolkit needed to train). Where pip is configured for a CPU-only index (as
#    the CPU machines that build the tutorial are), the preflight stops and names the command that installs
#    the CUDA build. Offline: point pip at a wheel folder (PIP_NO_INDEX=1 PIP_FIND_LINKS=/path/to/wheels).
# 2. Preflight (one line and exit 2 when it cannot run): nvidia-smi, torch.cuda.is_available(), the GPU and
#    its compute capability (below sm_80, e.g. a T4, the bf16 rows are skipped with that reason), and
#    whether nvcc is there (DeepSpeed JIT-builds FusedAdam and the hybrid engine's kernels with it).
# 3. Rows, each isolated: its own log, a time limit, its exit status recorded; a failing row stops nothing.
#    fp16 ZeRO-0; bf16 ZeRO-2; bf16 ZeRO-3 + LoRA + gradient checkpointing; padding-free packing (sdpa, and
#    FlashAttention when flash_attn is installed); SIGKILL mid-run + resume compared with the uninterrupted
#    fp16 run (per-step losses, and weights relative to how far training moved them); prompt_eval on the
#    GPU in its own precision (bf16, or fp16 below sm_80: sftlib.ds_config.half_dtype, the notebooks' rule);
#    notebook 06's hybrid-engine lesson (it generates, or refuses in one line where the pinned transformers
#    cannot take DeepSpeed's inference layer). Models: ~125M parameters from OPT-125m's (and a
#    same-size Llama's) configuration with the toy tokenizer.
# 4. One table: what each row measured (its setting, and the steps its rates are the median of, or what its
#    checks found), samples/s, TFLOPs per device, MFU against PEAK_TFLOPS (H200/H100 bf16 dense: 989), peak
#    GPU memory (nvidia-smi, sampled), result. Exit status 0 when no row failed or ran out of time.
#
# Time: SMOKE_BUDGET seconds (default 480) from the end of the preflight to the table; each row has its own
# limit (below; STEP_TIMEOUT overrides them all) and never runs past the budget; rows that would start with
# under 20 s left are SKIPPED (time budget), which counts as a failure. Environment: PY, PYTHON (the python
# that creates .venv), DEEPSPEED, SMOKE_OUT, PEAK_TFLOPS, STEP_TIMEOUT, SMOKE_BUDGET.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
[[ "${1:-}" == "--dry-run" ]] && DRY=1
OUT=${SMOKE_OUT:-outputs/gpu_smoke}
PEAK=${PEAK_TFLOPS:-989}
BUDGET=${SMOKE_BUDGET:-480}
ROWS=0
BF16=1
GPU_DTYPE=bf16  # the preflight's "dtype:" line (fp16 below compute capability 8.0), as the notebooks choose
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
DATA=(--data_path toy_world/data --data_split 10,0,0 --data_output_path "$OUT/cache")
TRAIN=(--num_train_epochs 1 --learning_rate 1e-4 --deepspeed_log_level info)
# Each row's limit in seconds: the first training row includes DeepSpeed's JIT build of FusedAdam.
declare -A LIMITS=([fp16_zero0]=150 [bf16_zero2]=75 [bf16_zero3_lora_gc]=90 [packing_padding_free_sdpa]=75
                   [packing_flatten_flash_attention]=75 [killed]=75 [killed_before_final_save]=5 [resume]=75
                   [resume_equals_uninterrupted]=60 [prompt_eval_gpu]=60 [hybrid_engine]=150)

say() { printf '%s\n' "$*"; }

# -------------------------------------------------------------------------------------------- environment
make_venv() {
    local base=${PYTHON:-}
    if [[ -z "$base" ]]; then
        for c in python3.11 python3; do command -v "$c" > /dev/null && { base=$c; break; }; done
    fi
    [[ -n "$base" ]] || { say "error: no python3.11 to create .venv with; set PYTHON=/path/to/python3.11"; exit 2; }
    mkdir -p outputs
    local log=outputs/gpu_smoke_install.log
    say "creating .venv with $base and installing this project into it (torch's CUDA build from PyPI; once) ..."
    if ! { "$base" -m venv .venv && .venv/bin/python -m pip install --upgrade pip \
           && .venv/bin/python -m pip install -e .; } > "$log" 2>&1; then
        rm -rf .venv  # made just now: a rerun starts again rather than use half an environment
        say "error: installing the project failed ($(grep -m1 -iE 'error' "$log" | cut -c1-160); full log: $log;" \
            "it needs Python 3.11: set PYTHON=python3.11)"
        exit 2
    fi
}

if [[ -z "${PY:-}" ]]; then
    if [[ -n "${VIRTUAL_ENV:-}${CONDA_PREFIX:-}" ]]; then
        PY=python  # an active environment is used as it is (as the Makefile does)
    else
        PY=.venv/bin/python
        (( DRY )) || [[ -x "$PY" ]] || make_venv
    fi
fi
if [[ -z "${DEEPSPEED:-}" ]]; then
    if [[ "$PY" == */* ]]; then DEEPSPEED="${PY%/*}/deepspeed"
    else DEEPSPEED="$(dirname "$(command -v "$PY" || echo "./$PY")")/deepspeed"; fi
fi

# -------------------------------------------------------------------------------------------- preflight
if (( ! DRY )); then
    command -v nvidia-smi > /dev/null || { say "error: no nvidia-smi: this script needs a CUDA GPU (try --dry-run)"; exit 2; }
    rm -rf "$OUT"; mkdir -p "$OUT"
    "$PY" bench/gpu_smoke_tools.py preflight | tee "$OUT/preflight.txt"
    (( PIPESTATUS[0] == 0 )) || exit 2
    grep -q '^bf16: yes' "$OUT/preflight.txt" || BF16=0
    GPU_DTYPE=$(sed -n 's/^dtype: \([a-z0-9]*\).*/\1/p' "$OUT/preflight.txt")
    [[ -n "$GPU_DTYPE" ]] || GPU_DTYPE=$( (( BF16 )) && echo bf16 || echo fp16 )
    SECONDS=0  # the time budget starts here: creating the environment is a one-off
    "$PY" -m sftlib.lessons.toy --models opt llama > "$OUT/setup.log" 2>&1 \
        && "$PY" bench/gpu_smoke_tools.py models "$OUT/models" >> "$OUT/setup.log" 2>&1 \
        || { say "error: building the toy world or the ~125M models failed (see $OUT/setup.log: $(tail -n 1 "$OUT/setup.log"))"; exit 1; }
else
    say "$PY bench/gpu_smoke_tools.py preflight"
    say "$PY -m sftlib.lessons.toy --models opt llama"
    say "$PY bench/gpu_smoke_tools.py models $OUT/models"
fi

# -------------------------------------------------------------------------------------------- rows
# What each row measures, for the table's "measured" column (no quotes or backslashes: it goes into JSON).
declare -A WHAT=([fp16_zero0]="OPT-125m fp16 ZeRO-0, 16 x up to 512 tokens (dynamic padding)"
                 [bf16_zero2]="OPT-125m bf16 ZeRO-2, 16 x up to 512 tokens"
                 [bf16_zero3_lora_gc]="OPT-125m bf16 ZeRO-3, LoRA 64 only, gradient checkpointing"
                 [packing_padding_free_sdpa]="Llama-125m bf16, 2 packed rows of 2048, padding-free sdpa"
                 [packing_flatten_flash_attention]="Llama-125m bf16, 2 packed rows of 2048 flattened, FlashAttention"
                 [killed_before_final_save]="the fp16 run SIGKILLed after its step-8 checkpoint, before its final save"
                 [resume]="the killed run resumed from its step-8 checkpoint"
                 [resume_equals_uninterrupted]="resumed vs uninterrupted fp16 run, per-step losses and weights"
                 [prompt_eval_gpu]="prompt_eval, baseline vs fine-tuned, greedy, $GPU_DTYPE"
                 [hybrid_engine]="notebook 06 hybrid-engine lesson, $GPU_DTYPE")

record() {  # record NAME RC [SKIP_REASON]: the row's line for the table
    local reason=${3:-}
    printf '{"n": %d, "name": "%s", "what": "%s", "rc": %d, "log": "%s", "mem": "%s", "skip": %s}\n' $((++ROWS)) \
        "$1" "${WHAT[$1]:-}" "$2" "$OUT/$1.log" "$OUT/$1.mem" \
        "$( [[ -n "$reason" ]] && printf '"%s"' "$reason" || printf null)" > "$OUT/$1.row.json"
}

limit_for() {  # limit_for NAME: this row's limit, never past the budget (0: no time left for it)
    local limit=${STEP_TIMEOUT:-${LIMITS[$1]:-60}} left=$(( BUDGET - SECONDS ))
    (( left < 20 )) && { echo 0; return; }
    (( limit > left )) && limit=$left
    echo "$limit"
}

# row NAME CMD...: run CMD under its limit (GPU memory sampled), record its exit status for the table.
row() {
    local name=$1; shift
    if (( DRY )); then say "$*"; return 0; fi
    local log="$OUT/$name.log" mem="$OUT/$name.mem" limit
    : > "$mem"
    limit=$(limit_for "$name")
    if (( limit == 0 )); then record "$name" 125; say "$name: skipped (over the ${BUDGET}s budget)"; return 0; fi
    ( while :; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 >> "$mem" 2>/dev/null
                  sleep 0.5; done ) &
    local sampler=$!
    timeout --kill-after=10 "$limit" "$@" > "$log" 2>&1  # TERM first: the launcher passes it to its ranks
    local rc=$?
    kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null
    record "$name" "$rc"
    say "$name: rc $rc ($(tail -n 1 "$log" | cut -c1-120))"
}

skip() {  # skip NAME REASON: a row this GPU cannot run, with the reason in the table (not a failure)
    if (( DRY )); then return 0; fi
    record "$1" 0 "$2"; say "$1: skipped ($2)"
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

bf16_row() {  # bf16_row NAME PORT ARGS...: run_train, or skip on a GPU without bf16
    if (( BF16 )); then run_train "$@"; else skip "$1" "bf16 needs compute capability 8.0+ (see the preflight)"; fi
}

OPT="$OUT/models/opt-125m"
LLAMA="$OUT/models/llama-125m"
COMMON=(--max_seq_len 512 --per_device_train_batch_size 16)

run_train fp16_zero0 29601 --model_name_or_path "$OPT" "${COMMON[@]}" --dtype fp16 --zero_stage 0 \
    --dynamic_padding --save_steps 8 --output_dir "$OUT/fp16_zero0"
bf16_row bf16_zero2 29602 --model_name_or_path "$OPT" "${COMMON[@]}" --dtype bf16 --zero_stage 2 \
    --dynamic_padding --output_dir "$OUT/bf16_zero2"
bf16_row bf16_zero3_lora_gc 29603 --model_name_or_path "$OPT" "${COMMON[@]}" --dtype bf16 --zero_stage 3 \
    --lora_dim 64 --lora_module_name decoder.layers. --only_optimize_lora --gradient_checkpointing \
    --dynamic_padding --output_dir "$OUT/bf16_zero3_lora_gc"
bf16_row packing_padding_free_sdpa 29604 --model_name_or_path "$LLAMA" --max_seq_len 2048 \
    --per_device_train_batch_size 2 --dtype bf16 --zero_stage 0 --packing padding_free \
    --output_dir "$OUT/packing_padding_free_sdpa"
if (( DRY )) || [[ -d "$OUT/models/llama-125m-fa" ]]; then
    bf16_row packing_flatten_flash_attention 29605 --model_name_or_path "$OUT/models/llama-125m-fa" \
        --max_seq_len 2048 --per_device_train_batch_size 2 --dtype bf16 --zero_stage 0 --packing auto \
        --output_dir "$OUT/packing_flash"
fi

# Kill-and-resume: the fp16 ZeRO-0 run again, SIGKILLed once its step-8 checkpoint is complete, then resumed;
# its per-step losses and final weights must match the uninterrupted fp16_zero0 run's (compare's checks).
mapfile -t KILLED < <(train 29606 --model_name_or_path "$OPT" "${COMMON[@]}" --dtype fp16 --zero_stage 0 \
    --dynamic_padding --save_steps 8 --output_dir "$OUT/killed")
if (( DRY )); then
    say "${KILLED[*]}"
elif (( $(limit_for killed) > 0 )); then
    setsid "${KILLED[@]}" > "$OUT/killed.log" 2>&1 &
    victim=$!
    for _ in $(seq 1 $(( $(limit_for killed) * 10 ))); do
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
row resume_equals_uninterrupted "$PY" bench/gpu_smoke_tools.py compare "$OUT/fp16_zero0" "$OUT/killed" \
    --initial "$OPT" --log "$OUT/resume.log"

row prompt_eval_gpu "$PY" -m sftlib.prompt_eval --model_name_or_path_baseline "$OPT" \
    --model_name_or_path_finetune "$OUT/fp16_zero0" --dtype "$GPU_DTYPE" --max_new_tokens 16 \
    --eval_file toy_world/data/eval.json
# The hybrid-engine lesson: it generates, or (deepspeed 0.19.8 with transformers 5.24) refuses in one line
# before DeepSpeed compiles anything; a traceback fails the row.
row hybrid_engine "$PY" bench/gpu_smoke_tools.py hybrid "$OPT" --dtype "$GPU_DTYPE"

if (( DRY )); then
    say "$PY bench/gpu_smoke_tools.py table $OUT $PEAK"
else
    say ""
    gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader -i 0 2>/dev/null | head -n 1)
    say "GPU smoke test, ${gpu:-unknown GPU}, $(date -u +%F), ${SECONDS}s, MFU vs $PEAK TFLOPs"
    "$PY" bench/gpu_smoke_tools.py table "$OUT" "$PEAK" | tee "$OUT/table.md"
    (( PIPESTATUS[0] == 0 )) && ! grep -qE "FAIL|SKIPPED" "$OUT/table.md"
fi
