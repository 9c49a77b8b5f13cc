"""DeepSpeed's hybrid engine (step 3's generation speed-up) once, on a small causal LM: a CUDA GPU only.

``deepspeed.initialize`` returns a ``DeepSpeedHybridEngine`` when the config's ``hybrid_engine.enabled``
is set: ``engine.train()`` trains through the ordinary modules, ``engine.eval()`` + ``generate`` swaps
each transformer block into DeepSpeed's CUDA inference kernels. Which blocks those are is a table lookup
that runs anywhere (``inference_blocks``). On a CPU building the first kernel fails (DeepSpeed's
"This op had not been implemented on CPU backend"), so ``sftlib.ds_config.check_hybrid_engine`` refuses
the engine in one sentence before DeepSpeed starts.

On a CUDA GPU with the pinned versions (deepspeed 0.19.8, transformers 5.24) it cannot run the OPT
models either: DeepSpeed keeps OPT's own layers only when their ``forward`` takes ``cache_position``
or ``past_key_values``, transformers 5.24 renamed that argument ``cache``, so every ``OPTDecoderLayer``
is swapped for DeepSpeed's inference layer, which returns a tuple, and the next layer, handed that
tuple, fails (an AttributeError, after DeepSpeed has compiled its CUDA sources with nvcc).
``check_injection`` finds this on the CPU before DeepSpeed starts (``tuple_breaks``: the model's own
forward with each swapped block returning a tuple, as DeepSpeed's does) and refuses in one line::

    python -m sftlib.lessons.hybrid_engine        # CPU or pinned versions: one line, exit 2

Explained in notebooks/06_hybrid_engine_and_logs.ipynb.
"""

from __future__ import annotations

import argparse
from collections import Counter
from types import SimpleNamespace

from sftlib.cli import run
from sftlib.dist import init_distributed
from sftlib.ds_config import check_hybrid_engine, get_train_ds_config
from sftlib.errors import SFTError

PROMPT = "\n\nHuman: What is the opposite of hot?\n\nAssistant:"  # a toy-world question


def inference_blocks(model) -> dict[str, tuple[str, int]]:
    """The blocks of ``model`` that ``DeepSpeedHybridEngine`` would run in its inference kernels.

    Returns ``{layer class: (DeepSpeed policy, how many)}``, from the engine's own policy table
    (``populate_all_inference_policies``) asked on a stand-in that holds only the model: nothing is
    built, so it runs on a CPU. Empty when DeepSpeed has no policy for the model's blocks (the engine
    then keeps the model's own ``generate``).
    """
    from deepspeed.runtime.hybrid_engine import DeepSpeedHybridEngine

    table = SimpleNamespace(module=model, new_inference_container=None)
    DeepSpeedHybridEngine.populate_all_inference_policies(table)
    policies = table.inference_policies  # layer class -> (builder, policy); auxiliary layers: (builder,)
    found = Counter((type(m).__name__, policies[type(m)][1].__name__) for m in model.modules()
                    if len(policies.get(type(m), ())) == 2)
    return {layer: (policy, n) for (layer, policy), n in found.items()}


# Where a block's injection is known to fail, the versions where DeepSpeed keeps it on the model's own path
# (read in each version's modeling_opt.py: OPTDecoderLayer.forward takes past_key_values).
WORKING_VERSIONS = {"OPTDecoderLayer": "transformers<=5.18 works (4.57.6, 5.17 and 5.18 read): its OPT layer takes "
                                       "past_key_values, so DeepSpeed keeps the model's own generate"}


def tuple_breaks(model, blocks) -> bool:
    """Does ``model``'s forward fail once each block of class name in ``blocks`` returns a tuple?

    DeepSpeed's inference layer (``DeepSpeedTransformerInference.forward``) returns ``(output, ...)``
    and first calls ``input.size()``; a decoder that hands each layer's return to the next as the
    hidden states passes it a tuple. Simulated here on the CPU with stand-ins for those blocks; a model
    that fails without them too answers False (nothing learned)."""
    import torch

    def like_deepspeed(hidden_states, *args, **kwargs):
        hidden_states.size()  # a tuple has no .size(): where DeepSpeed's allocate_workspace call fails
        return (hidden_states, None)

    ids = torch.arange(4)[None] % model.config.vocab_size
    swapped = [m for m in model.modules() if type(m).__name__ in blocks]
    with torch.no_grad():
        try:
            for module in swapped:
                module.forward = like_deepspeed
            model(input_ids=ids, use_cache=False)
            return False
        except (AttributeError, TypeError):
            pass
        finally:
            for module in swapped:
                del module.forward
        try:
            model(input_ids=ids, use_cache=False)
        except Exception:  # noqa: BLE001 - the model fails on its own: the probe proves nothing
            return False
    return True


def check_injection(model) -> None:
    """Raise ``SFTError`` (one line: the reason and what works) when the hybrid engine would swap blocks
    of ``model`` into DeepSpeed's inference layer and the model cannot take that layer's tuples.

    Runs on the CPU before ``deepspeed.initialize``: no kernel is compiled, nothing is on the GPU."""
    import deepspeed
    import transformers

    blocks = inference_blocks(model)
    if not blocks or not tuple_breaks(model, blocks):
        return
    names = ", ".join(blocks)
    works = next((WORKING_VERSIONS[b] for b in blocks if b in WORKING_VERSIONS), "no working version is known")
    rule = " (it keeps OPT's own only when forward takes cache_position or past_key_values)" \
        if "OPTDecoderLayer" in blocks else ""
    raise SFTError(f"the hybrid engine cannot run {names} with transformers {transformers.__version__} and deepspeed "
                   f"{deepspeed.__version__}: DeepSpeed swaps each one for its CUDA inference layer{rule}, which "
                   "returns a tuple where this model passes each layer's output on as a tensor, so generate would "
                   f"fail after compiling DeepSpeed's kernels with nvcc; {works}; or leave hybrid_engine.enabled "
                   "false (step 1 never uses it)")


def run_hybrid_engine(config: dict, model_path: str, prompt: str = PROMPT, max_new_tokens: int = 8):
    """Wrap a small causal LM in ``DeepSpeedHybridEngine``, train one step, generate; returns (engine, text).

    Raises ``SFTError`` on a CPU before anything is loaded (``check_hybrid_engine``), and on a GPU
    before DeepSpeed starts when the model cannot take DeepSpeed's inference layer (``check_injection``).
    """
    check_hybrid_engine(config)
    import deepspeed
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # "Loading weights" would come before a one-line refusal
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        model = AutoModelForCausalLM.from_pretrained(model_path)
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    check_injection(model)  # on the CPU, before any kernel is compiled
    init_distributed()
    config = {**config, "train_batch_size": 1, "train_micro_batch_size_per_gpu": 1}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    batch = tokenizer(prompt, return_tensors="pt").to(engine.device)
    engine.train()
    engine.backward(engine(**batch, labels=batch["input_ids"]).loss)  # training mode: ordinary modules
    engine.step()
    engine.eval()  # generation mode: the hybrid engine swaps in its inference containers
    out = engine.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
    return engine, tokenizer.decode(out[0], skip_special_tokens=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Run DeepSpeed's hybrid engine once: one training step, then generate.")
    p.add_argument("--model_name_or_path", default=None, help="a small causal LM (default: the toy OPT)")
    p.add_argument("--dtype", default="fp16", choices=("fp16", "bf16", "fp32"))
    p.add_argument("--max_new_tokens", type=int, default=8)
    args = p.parse_args(argv)
    config = get_train_ds_config(offload=False, dtype=args.dtype, stage=0, enable_hybrid_engine=True)
    check_hybrid_engine(config)  # before the toy world is built or a model loaded
    path = args.model_name_or_path
    if path is None:
        from sftlib.lessons.toy import ensure_toy_world

        path = str(ensure_toy_world(("opt",))["opt"])
    engine, text = run_hybrid_engine(config, path, max_new_tokens=args.max_new_tokens)
    print(f"{type(engine).__name__} generated: {text!r}")


if __name__ == "__main__":
    run(main)
