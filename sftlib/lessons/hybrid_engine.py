"""DeepSpeed's hybrid engine (step 3's generation speed-up) once, on a small causal LM: a CUDA GPU only.

``deepspeed.initialize`` returns a ``DeepSpeedHybridEngine`` when the config's ``hybrid_engine.enabled``
is set: ``engine.train()`` trains through the ordinary modules, ``engine.eval()`` + ``generate`` swaps
each transformer block into DeepSpeed's CUDA inference kernels. Which blocks those are is a table lookup
that runs anywhere (``inference_blocks``). On a CPU building the first kernel fails (DeepSpeed's
"This op had not been implemented on CPU backend"), so ``sftlib.ds_config.check_hybrid_engine`` refuses
the engine in one sentence before DeepSpeed starts::

    python -m sftlib.lessons.hybrid_engine        # CPU: one sentence, exit 2; CUDA: one step, then generate

Explained in notebooks/06_hybrid_engine_and_logs.ipynb.
"""

from __future__ import annotations

import argparse
from collections import Counter
from types import SimpleNamespace

from sftlib.cli import run
from sftlib.dist import init_distributed
from sftlib.ds_config import check_hybrid_engine, get_train_ds_config

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


def run_hybrid_engine(config: dict, model_path: str, prompt: str = PROMPT, max_new_tokens: int = 8):
    """Wrap a small causal LM in ``DeepSpeedHybridEngine``, train one step, generate; returns (engine, text).

    Raises ``SFTError`` (from ``check_hybrid_engine``) on a CPU before anything is loaded.
    """
    check_hybrid_engine(config)
    import deepspeed
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    init_distributed()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path)
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
