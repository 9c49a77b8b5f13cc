"""ZeRO: saving a model that no single rank holds whole, and planning how much memory a run needs.

DeepSpeed-Chat's ``save_zero_three_model`` (``dschat/utils/utils.py``) with what it lacks: buffers,
tied weights, an atomic write and a Hugging Face folder. Beside it, DeepSpeed's own two ways to get
whole weights back (``GatheredParameters`` on the whole model, ``zero_to_fp32`` on a checkpoint),
what each rank holds under ZeRO 0-3, and a memory planner checked against DeepSpeed's estimators.

Per-rank report, run under the launcher (every rank takes part, rank 0 writes the json)::

    OMP_NUM_THREADS=1 deepspeed --num_gpus 2 --module sftlib.zero --report-partitions out.json \\
        --model_name_or_path toy_world/opt-tiny --stages 0 1 2 3

Explained in notebooks/04_zero3_saving.ipynb.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass

import torch

from sftlib.utils import write_hf_folder

SAVE_PAUSE_ENV = "SFTLIB_SAVE_PAUSE_S"  # fault injection: rank 0 sleeps this long with the save half done
REPORT_ENV = "SFTLIB_ZERO_REPORT"  # a json path: save_zero_three_model also records what each rank held
GB = 1e9


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


# --------------------------------------------------------------------------------------------
# Gathering
# --------------------------------------------------------------------------------------------

def tied_parameter_names(model) -> dict[str, str]:
    """``{alias: first name}`` for every parameter reachable under more than one name (tied weights)."""
    first, aliases = {}, {}
    for name, param in _unwrap(model).named_parameters(remove_duplicate=False):
        if id(param) in first:
            aliases[name] = first[id(param)]
        else:
            first[id(param)] = name
    return aliases


def persistent_buffers(model):
    """``(name, buffer)`` for buffers that belong in a state dict (``persistent=False`` ones do not)."""
    for mod_name, module in _unwrap(model).named_modules():
        for name, buf in module.named_buffers(recurse=False):
            if buf is not None and name not in module._non_persistent_buffers_set:
                yield (f"{mod_name}.{name}" if mod_name else name), buf


def gather_state_dict(model_ema, global_rank: int, zero_stage: int = 3) -> dict:
    """Every non-LoRA parameter and persistent buffer as a CPU tensor on rank 0 (empty dict elsewhere).

    All ranks must call it. Under ZeRO-3 each parameter is gathered in turn, so the extra memory is
    one whole parameter, never the whole model. A tied weight is stored once, under its first name
    (``save_pretrained`` and ``from_pretrained`` re-tie it). Buffers are never partitioned by ZeRO,
    so rank 0 copies its own.
    """
    import deepspeed

    model = _unwrap(model_ema)
    state = {}
    for name, param in model.named_parameters():  # each tied parameter once
        partitioned = zero_stage == 3 and hasattr(param, "ds_id")
        with deepspeed.zero.GatheredParameters([param], enabled=partitioned):
            if global_rank == 0 and "lora" not in name:
                state[name] = param.detach().cpu().clone()
    if global_rank == 0:
        for name, buf in persistent_buffers(model):
            if "lora" not in name:
                state[name] = buf.detach().cpu().clone()
    return state


def gather_whole_model(model_ema, global_rank: int, zero_stage: int = 3) -> dict:
    """DeepSpeed's one-shot way: ``GatheredParameters`` on every parameter at once.

    Simple, but every rank then holds the whole model (in the training dtype) for a moment: fine for
    a model that fits one device, out of memory for one that needed ZeRO-3 in the first place.
    """
    import deepspeed

    model = _unwrap(model_ema)
    params = [p for p in model.parameters() if zero_stage == 3 and hasattr(p, "ds_id")]
    with deepspeed.zero.GatheredParameters(params, enabled=bool(params)):
        if global_rank != 0:
            return {}
        state = {n: p.detach().cpu().clone() for n, p in model.named_parameters() if "lora" not in n}
    state.update({n: b.detach().cpu().clone() for n, b in persistent_buffers(model) if "lora" not in n})
    return state


def consolidate_zero_checkpoint(checkpoint_dir, tag=None) -> dict:
    """DeepSpeed's offline way: fp32 weights rebuilt from a ``engine.save_checkpoint`` folder.

    ``zero_to_fp32`` reads every rank's optimizer shard in one process (no GPUs, no launcher) and
    returns the fp32 *master* weights, which under fp16/bf16 training are more precise than the
    16-bit weights the model computes with. Buffers are included; LoRA keys are dropped here.
    """
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_dir), tag=tag)
    return {k: v.detach().cpu() for k, v in state.items() if "lora" not in k}


def compare_state_dicts(a: dict, b: dict, aliases: dict | None = None) -> float:
    """Largest absolute difference over the keys of ``a``; a key missing from ``b`` raises KeyError.

    ``aliases`` (from ``tied_parameter_names``) lets ``b`` hold a tied weight under its other name.
    """
    aliases = aliases or {}
    rev = {v: k for k, v in aliases.items()}
    worst = 0.0
    for key, val in a.items():
        other = b[key] if key in b else b[rev[key]] if key in rev else b[aliases[key]]
        if val.shape != other.shape:
            raise ValueError(f"{key}: shape {tuple(val.shape)} != {tuple(other.shape)}")
        worst = max(worst, (val.float() - other.float()).abs().max().item() if val.numel() else 0.0)
    return worst


class _PausingTokenizer:
    """Fault injection for the atomic-save demo: saves the tokenizer, then sleeps mid-save."""

    def __init__(self, tokenizer, seconds: float):
        self.tokenizer, self.seconds = tokenizer, seconds

    def save_pretrained(self, folder):
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(folder)
        print(f"sftlib: paused mid-save, {sorted(os.listdir(folder))} written to {folder}", flush=True)
        time.sleep(self.seconds)


def save_zero_three_model(model_ema, global_rank: int, save_dir: str, zero_stage: int = 0,
                          tokenizer=None) -> None:
    """All ranks call this; rank 0 writes an HF folder (safetensors, config, tokenizer) atomically.

    DeepSpeed-Chat's semantics (one parameter gathered at a time, rank 0 keeps CPU copies of the
    non-LoRA ones), plus persistent buffers, tied weights stored once, and a write into a hidden
    temporary folder renamed into place: a rank killed while saving leaves the previous save, or
    nothing. ``SFTLIB_SAVE_PAUSE_S`` makes rank 0 sleep with the save half done (for that demo);
    ``SFTLIB_ZERO_REPORT=path.json`` also records each rank's partition sizes. Explained in
    notebooks/04_zero3_saving.ipynb.
    """
    report_path = os.environ.get(REPORT_ENV)
    if report_path:
        report = all_ranks(partition_report(model_ema, zero_stage))
        if global_rank == 0:
            with open(report_path, "w") as f:
                json.dump({"zero_stage": zero_stage, "ranks": report}, f, indent=1)
    state = gather_state_dict(model_ema, global_rank, zero_stage)
    if global_rank == 0:
        remove_stale_temporaries(save_dir)
        pause = float(os.environ.get(SAVE_PAUSE_ENV, "0") or 0)
        tok = _PausingTokenizer(tokenizer, pause) if pause > 0 else tokenizer
        write_hf_folder(_unwrap(model_ema), state, tok, save_dir)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def remove_stale_temporaries(save_dir) -> list[str]:
    """Delete hidden ``.NAME.tmp-PID`` / ``.NAME.old-PID`` siblings left by a saver that was killed.

    A killed save never touches ``save_dir`` itself, but its temporary folder stays behind; the next
    save removes those whose process is gone.
    """
    import shutil
    from pathlib import Path

    save_dir = Path(save_dir)
    removed = []
    for tmp in save_dir.parent.glob(f".{save_dir.name}.*-*"):
        kind, _, pid = tmp.name[len(save_dir.name) + 2:].rpartition("-")
        if kind in ("tmp", "old") and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp.name)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def resave(src: str, dst: str, add: float = 0.0) -> None:
    """One rank's save, on its own: load the HF folder ``src``, add ``add`` to every weight, save to ``dst``.

    Run as ``python -m sftlib.zero --resave SRC DST`` with ``SFTLIB_SAVE_PAUSE_S`` set, it is the
    process the atomic-save demo kills in the middle of writing.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(add)
    save_zero_three_model(model, 0, dst, 0, AutoTokenizer.from_pretrained(src))


def start_paused_save(src, dst, add: float = 1.0, pause_s: float = 120):
    """Start ``python -m sftlib.zero --resave SRC DST`` with rank 0 told to pause mid-save."""
    import subprocess

    env = dict(os.environ, OMP_NUM_THREADS="1", **{SAVE_PAUSE_ENV: str(pause_s)})
    return subprocess.Popen([sys.executable, "-m", "sftlib.zero", "--resave", str(src), str(dst), "--add", str(add)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def kill_when_paused(proc, dst) -> dict:
    """SIGKILL a ``start_paused_save`` process once its weights are in the temp folder.

    Returns what was on disk at the moment of the kill: the temp folder and its files.
    """
    import signal
    from pathlib import Path

    dst = Path(dst)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "paused mid-save" in line:
            break
    else:
        proc.wait()
        raise RuntimeError("the saver ended before pausing:\n" + "".join(lines[-20:]))
    temps = sorted(p for p in dst.parent.iterdir() if p.name.startswith(f".{dst.name}.tmp-"))
    seen = {"temp": [str(t) for t in temps], "temp_files": sorted(os.listdir(temps[0])) if temps else []}
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return {**seen, "returncode": proc.returncode}


def launch(module: str, args: list, ranks: int = 2, env: dict | None = None, timeout: int = 600):
    """Run ``deepspeed --num_gpus RANKS --module MODULE ARGS`` (one thread per rank) and return its output.

    On a CPU the launcher starts RANKS processes on the gloo backend; a free port is picked. A
    failure raises with the end of the log.
    """
    import socket
    import subprocess

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    launcher = os.path.join(os.path.dirname(sys.executable), "deepspeed")
    cmd = [launcher, "--num_gpus", str(ranks), "--master_port", str(port), "--module", module, *map(str, args)]
    dist_vars = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    clean = {k: v for k, v in os.environ.items() if k not in dist_vars}  # not the caller's one-rank group
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env=dict(clean, OMP_NUM_THREADS="1", **(env or {})))
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:8])} ... failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return proc.stdout


# --------------------------------------------------------------------------------------------
# What each rank holds
# --------------------------------------------------------------------------------------------

def all_ranks(item) -> list:
    """``item`` from every rank, in rank order (just ``[item]`` without a process group)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return [item]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, item)
    return out


def _unique_params(model):
    return list({id(p): p for p in _unwrap(model).parameters()}.values())


def param_elements(model, rank: int = 0) -> dict:
    """Parameter elements this rank stores: ``real`` (its share of the model) and ``padded``.

    Under ZeRO-3 a parameter of n elements is cut into world-size pieces of ceil(n / world); the
    last pieces are padded with zeros, so ``real`` over ranks sums to the model size exactly.
    """
    real = padded = 0
    for p in _unique_params(model):
        if hasattr(p, "ds_tensor"):
            piece = p.ds_tensor.ds_numel
            padded += piece
            real += max(0, min(piece, p.ds_numel - rank * piece))
        else:
            real += p.numel()
            padded += p.numel()
    return {"real": real, "padded": padded}


def _numel(tensors) -> int:
    return int(sum(t.numel() for t in tensors if torch.is_tensor(t)))


def grad_elements(engine) -> int:
    """Gradient elements this rank holds after ``backward`` (before ``step``)."""
    opt = engine.optimizer
    if getattr(opt, "grad_partitions_flat_buffer", None) is not None:  # ZeRO-3
        return _numel([opt.grad_partitions_flat_buffer])
    averaged = getattr(opt, "averaged_gradients", None)  # ZeRO-1/2: this rank's reduced partition
    if averaged:
        return _numel(t for group in averaged.values() for t in (group if isinstance(group, list) else [group]))
    return _numel(p.grad for p in _unique_params(engine) if p.grad is not None)  # ZeRO-0/1


def optimizer_elements(engine) -> dict:
    """fp32 master-weight and Adam-moment elements this rank holds after ``step``."""
    opt = engine.optimizer
    master = getattr(opt, "fp32_partitioned_groups_flat", None) or getattr(opt, "single_partition_of_fp32_groups", [])
    base = getattr(opt, "optimizer", opt)
    moments = _numel(v for state in base.state.values() for k, v in state.items() if k != "step")
    return {"master": _numel(master), "moments": moments}


def partition_report(engine, zero_stage: int) -> dict:
    """This rank's parameter elements (and, when the optimizer has stepped, its optimizer elements)."""
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_initialized() else 0
    out = {"rank": rank, "zero_stage": zero_stage, "params": param_elements(engine, rank)}
    if hasattr(engine, "optimizer") and engine.optimizer is not None:
        out.update(optimizer_elements(engine))
    return out


# --------------------------------------------------------------------------------------------
# Memory planner
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelSpec:
    """The shape numbers the planner needs; ``params`` and ``largest_layer`` counted on a meta model."""

    name: str
    params: int
    largest_layer: int  # elements of the biggest single module (the embedding here): ZeRO-3 gathers it whole
    layers: int
    hidden: int
    heads: int
    vocab: int
    ffn: int


_CONFIGS = {  # published architectures (config.json of each hub model)
    "OPT-1.3B": ("opt", dict(hidden_size=2048, num_hidden_layers=24, num_attention_heads=32, ffn_dim=8192)),
    "OPT-6.7B": ("opt", dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, ffn_dim=16384)),
    "OPT-13B": ("opt", dict(hidden_size=5120, num_hidden_layers=40, num_attention_heads=40, ffn_dim=20480)),
    "OPT-66B": ("opt", dict(hidden_size=9216, num_hidden_layers=64, num_attention_heads=72, ffn_dim=36864)),
    "Llama-2-7B": ("llama", dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                                 num_key_value_heads=32, intermediate_size=11008)),
    "Llama-2-70B": ("llama", dict(hidden_size=8192, num_hidden_layers=80, num_attention_heads=64,
                                  num_key_value_heads=8, intermediate_size=28672)),
}


def model_spec(name: str) -> ModelSpec:
    """Count a published model's parameters by building it on the ``meta`` device (no memory, no download)."""
    from transformers import AutoModelForCausalLM, LlamaConfig, OPTConfig

    kind, dims = _CONFIGS[name]
    if kind == "opt":
        cfg = OPTConfig(vocab_size=50272, max_position_embeddings=2048, word_embed_proj_dim=dims["hidden_size"],
                        tie_word_embeddings=True, **dims)
        ffn = dims["ffn_dim"]
    else:
        cfg = LlamaConfig(vocab_size=32000, max_position_embeddings=4096, tie_word_embeddings=False, **dims)
        ffn = dims["intermediate_size"]
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    params = sum(p.numel() for p in _unique_params(model))
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    return ModelSpec(name, params, largest, cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads,
                     cfg.vocab_size, ffn)


def lora_params(spec: ModelSpec, lora_dim: int = 128) -> int:
    """LoRA elements when every linear layer of every block gets rank ``lora_dim`` (DeepSpeed-Chat's
    ``--lora_module_name decoder.layers.``): r * (in + out) per linear."""
    h, f = spec.hidden, spec.ffn
    per_layer = 4 * (h + h) + (h + f) + (f + h) if f else 0
    if spec.name.startswith("Llama"):
        per_layer += f + h  # the gate projection
    return lora_dim * per_layer * spec.layers


def activation_bytes(spec: ModelSpec, micro_batch: int, seq_len: int, gradient_checkpointing: bool) -> int:
    """16-bit activation memory of one rank (Korthikanti et al. 2022, no sequence parallelism).

    One block keeps about s*b*h*(34 + 5*a*s/h) bytes for backward; with checkpointing only each
    block's input (2*s*b*h bytes) is kept and one block's worth is recomputed at a time. The logits
    (b*s*V, 16-bit plus the fp32 copy for the loss) come on top either way.
    """
    sbh = seq_len * micro_batch * spec.hidden
    block = sbh * (34 + 5 * spec.heads * seq_len / spec.hidden)
    blocks = spec.layers * 2 * sbh + block if gradient_checkpointing else spec.layers * block
    logits = micro_batch * seq_len * spec.vocab * (2 + 4)
    return int(blocks + logits)


def plan_memory(params: int, n_gpus: int = 1, zero_stage: int = 3, offload_optimizer: bool = False,
                offload_param: bool = False, trainable: int | None = None, largest_layer: int = 0,
                activations: int = 0, sub_group_size: int = int(1e9)) -> dict:
    """Bytes per GPU (and CPU bytes per node) for a 16-bit mixed-precision Adam run.

    Per trained parameter DeepSpeed keeps: 16-bit weight (2), 16-bit gradient (2), fp32 master
    weight (4), Adam's two moments (4 + 4), and at ``step`` an fp32 copy of the gradient (4). A
    frozen parameter (LoRA's base weights) keeps only its 16-bit weight. ZeRO-1 partitions the
    optimizer part (master, moments, fp32 gradient) over the GPUs, ZeRO-2 also the gradients,
    ZeRO-3 also the weights, at the price of gathering the largest layer whole (weight and gradient,
    4 bytes per element). ZeRO-3 makes the fp32 gradient one sub-group at a time. Offloading moves
    the optimizer part and 16-bit gradients (``offload_optimizer``), or also the weights
    (``offload_param``, ZeRO-3 only), to CPU memory. ``trainable`` defaults to ``params``; pass
    LoRA's count for a LoRA run with ``--only_optimize_lora``. Against DeepSpeed's estimators: the
    same numbers for ZeRO-2 and for ZeRO-3 with offload; for ZeRO-3 without offload DeepSpeed
    charges 18 bytes / GPUs per parameter (no 16-bit weight shard, a whole fp32 gradient shard), so
    the two differ by 2/GPUs bytes per parameter, minus the sub-group saving. Explained in
    notebooks/04_zero3_saving.ipynb.
    """
    g = n_gpus
    t = params if trainable is None else trainable
    shard_opt, shard_grad, shard_w = (g if zero_stage >= k else 1 for k in (1, 2, 3))
    weights = 2 * params / shard_w
    grads = 2 * t / shard_grad
    fp32_grad = 4 * (min(sub_group_size, t / g) if zero_stage == 3 else t / shard_opt)
    optim = 12 * t / shard_opt
    gather = 4 * largest_layer if zero_stage == 3 else 0
    cpu = 0.0  # summed over the node's GPUs: each moves its own partitions
    if offload_optimizer:
        cpu += 18 * t
        grads = fp32_grad = optim = 0.0
    if offload_param and zero_stage == 3:
        cpu += 2 * params
        weights = 0.0
    parts = {"weights": weights, "grads": grads, "fp32_grad": fp32_grad, "optimizer": optim, "gather": gather,
             "activations": float(activations)}
    gpu = sum(parts.values())
    return {**{k: int(v) for k, v in parts.items()}, "gpu_bytes": int(gpu), "gpu_gb": gpu / GB,
            "cpu_bytes_per_node": int(cpu), "cpu_gb_per_node": cpu / GB}


def deepspeed_estimate(params: int, n_gpus: int, zero_stage: int, offload_optimizer: bool = False,
                       offload_param: bool = False, largest_layer: int = 0) -> int:
    """GPU bytes from DeepSpeed's own estimator (the numbers its ``*_all_cold`` functions print)."""
    if zero_stage == 2:
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

        return estimate_zero2_model_states_mem_needs(params, n_gpus, 1, cpu_offload=offload_optimizer)[1]
    if zero_stage == 3:
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

        return estimate_zero3_model_states_mem_needs(params, largest_layer, n_gpus, 1, cpu_offload=offload_optimizer,
                                                     cpu_offload_params=offload_param)[1]
    raise ValueError("DeepSpeed has estimators for ZeRO-2 and ZeRO-3 only")


def fits(plan: dict, gpu_gb: float, reserve_gb: float = 2.0) -> bool:
    """True when the plan leaves ``reserve_gb`` per GPU for the CUDA context, NCCL and fragmentation."""
    return plan["gpu_gb"] <= gpu_gb - reserve_gb


RECIPES = {  # name: (zero stage, offload optimizer, offload params, LoRA only, gradient checkpointing)
    "full, ZeRO-3": (3, False, False, False, False),
    "full, ZeRO-3 + offload": (3, True, True, False, True),
    "LoRA + ckpt, ZeRO-3": (3, False, False, True, True),
}


def plan_recipe(spec: ModelSpec, recipe: str, n_gpus: int, micro_batch: int = 1, seq_len: int = 512,
                lora_dim: int = 128) -> dict:
    """``plan_memory`` for one of ``RECIPES`` on a ``ModelSpec``, activations included."""
    stage, off_opt, off_par, lora_only, ckpt = RECIPES[recipe]
    trainable = lora_params(spec, lora_dim) if lora_only else None
    act = activation_bytes(spec, micro_batch, seq_len, ckpt)
    return plan_memory(spec.params, n_gpus, stage, off_opt, off_par, trainable, spec.largest_layer, act)


def rule_of_thumb_billions(n_gpus: int, gpu_gb: float) -> float:
    """The seed's rule: with ZeRO-3, gradient checkpointing and LoRA, about total GPU GB / 3 billion parameters."""
    return n_gpus * gpu_gb / 3


SETUPS = ((1, 24, 64), (1, 48, 256), (8, 80, 1024))  # (GPUs, GB per GPU, CPU RAM GB): desktop, workstation, DGX node


def plan_table(models=tuple(_CONFIGS), setups=SETUPS, recipes=tuple(RECIPES), micro_batch: int = 1,
               seq_len: int = 512):
    """A pandas table: GB per GPU for every model x setup x recipe, whether it fits, and what GB/3 says.

    A plan fits when each GPU keeps 2 GB free and, with offload, the node's CPU RAM holds what moved there.
    """
    import pandas as pd

    rows = []
    for name in models:
        spec = model_spec(name)
        for n_gpus, gpu_gb, ram_gb in setups:
            for recipe in recipes:
                plan = plan_recipe(spec, recipe, n_gpus, micro_batch, seq_len)
                rows.append({"model": name, "params_B": spec.params / 1e9, "setup": f"{n_gpus}x{gpu_gb}GB",
                             "recipe": recipe, "gb_per_gpu": round(plan["gpu_gb"], 1),
                             "cpu_gb": round(plan["cpu_gb_per_node"], 0),
                             "fits": fits(plan, gpu_gb) and plan["cpu_gb_per_node"] <= 0.9 * ram_gb,
                             "gb3_rule_fits": spec.params / 1e9 <= rule_of_thumb_billions(n_gpus, gpu_gb)})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# The per-rank report (run under the launcher)
# --------------------------------------------------------------------------------------------

def _fixed_batch(tokenizer, n: int = 4, seq_len: int = 16) -> dict:
    texts = [f"\n\nHuman: Repeat the word w{i}.\n\nAssistant: w{i}." for i in range(n)]
    tok = tokenizer(texts, max_length=seq_len, padding="max_length", truncation=True, return_tensors="pt")
    return {**tok, "labels": tok["input_ids"].clone()}


def _stage_report(args, stage: int, world: int) -> dict:
    """Build an engine at ``stage``, take one step, and measure what this rank holds."""
    import deepspeed
    from transformers import AutoModelForCausalLM

    from sftlib import model as model_utils
    from sftlib.ds_config import get_train_ds_config
    from sftlib.utils import set_random_seed

    set_random_seed(args.seed)
    ds_config = get_train_ds_config(offload=False, dtype="fp32", stage=stage)
    ds_config.update(train_micro_batch_size_per_gpu=2, train_batch_size=2 * world)
    tokenizer = model_utils.load_hf_tokenizer(args.model_name_or_path)
    model = model_utils.create_hf_model(AutoModelForCausalLM, args.model_name_or_path, tokenizer, ds_config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    rank = engine.global_rank
    batch = {k: v[2 * rank:2 * rank + 2] for k, v in _fixed_batch(tokenizer, 2 * world).items()}
    engine.backward(engine(**batch).loss)
    grads = grad_elements(engine)
    engine.step()
    out = {**partition_report(engine, stage), "grads": grads,
           "model_params": sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in _unique_params(engine))}
    if stage == 3 and args.save_dir:
        out.update(_compare_consolidations(engine, tokenizer, args.save_dir, rank))
    return out


def _compare_consolidations(engine, tokenizer, save_dir: str, rank: int) -> dict:
    """Save three ways (per-parameter gather, whole-model gather, zero_to_fp32) and time each."""
    import torch.distributed as dist

    t0 = time.time()
    save_zero_three_model(engine, rank, os.path.join(save_dir, "gathered"), 3, tokenizer)
    t1 = time.time()
    whole = gather_whole_model(engine, rank, 3)
    t2 = time.time()
    engine.save_checkpoint(os.path.join(save_dir, "ds_checkpoint"), tag="final")
    dist.barrier()
    out = {"seconds_per_param_gather": t1 - t0, "seconds_whole_gather": t2 - t1}
    if rank == 0:
        from safetensors.torch import load_file

        saved = load_file(os.path.join(save_dir, "gathered", "model.safetensors"))
        t3 = time.time()
        fp32 = consolidate_zero_checkpoint(os.path.join(save_dir, "ds_checkpoint"), tag="final")
        out.update(seconds_zero_to_fp32=time.time() - t3, saved_keys=sorted(saved), whole_keys=sorted(whole),
                   zero_to_fp32_keys=sorted(fp32), max_diff_saved_vs_whole=compare_state_dicts(saved, whole),
                   max_diff_saved_vs_zero_to_fp32=compare_state_dicts(saved, fp32, tied_parameter_names(engine)),
                   tied=tied_parameter_names(engine))
    return out


def report_partitions(args) -> list:
    """Every stage of ``args.stages`` in turn (ZeRO-3 last: it leaves ``zero.Init`` active)."""
    import deepspeed
    import torch.distributed as dist

    deepspeed.init_distributed()
    world = dist.get_world_size()
    reports = {}
    for stage in sorted(args.stages):
        reports[stage] = all_ranks(_stage_report(args, stage, world))
    if dist.get_rank() == 0:
        with open(args.report_partitions, "w") as f:
            json.dump({"world_size": world, "stages": reports}, f, indent=1)
    return reports


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="What each rank holds under ZeRO 0-3 (run under the launcher)")
    todo = p.add_mutually_exclusive_group(required=True)
    todo.add_argument("--report-partitions", help="json file rank 0 writes")
    todo.add_argument("--resave", nargs=2, metavar=("SRC", "DST"), help="load SRC, save it to DST (one process)")
    p.add_argument("--add", type=float, default=0.0, help="with --resave: added to every weight first")
    p.add_argument("--model_name_or_path")
    p.add_argument("--stages", type=int, nargs="+", default=[0, 1, 2, 3])
    p.add_argument("--save_dir", default=None, help="under ZeRO-3, also save three ways here and compare")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--local_rank", type=int, default=-1, help="set by the launcher")
    args = p.parse_args(argv)
    if args.resave:
        resave(*args.resave, add=args.add)
    else:
        report_partitions(args)


if __name__ == "__main__":
    main(sys.argv[1:])
