"""Baseline versus fine-tuned generations, as DeepSpeed-Chat's ``prompt_eval.py`` prints them,
plus an exact-match score over held-out prompts.

    python -m sftlib.prompt_eval --model_name_or_path_baseline toy_world/opt-tiny \\
        --model_name_or_path_finetune outputs/demo/model --eval_file toy_world/data/eval.json

``--prompt TEXT`` (repeatable) replaces the original's prompts of ``--language`` with your own.

Explained in notebooks/05_main_training_loop.ipynb.
"""

from __future__ import annotations

import argparse

import torch

from sftlib.cli import run
from sftlib.errors import SFTError

PROMPTS = {
    "English": ["Human: Please tell me about Microsoft in a few sentence? Assistant:",
                "Human: Explain the moon landing to a 6 year old in a few sentences. Assistant:",
                "Human: Write a short poem about a wise frog. Assistant:",
                "Human: Who was president of the United States in 1955? Assistant:",
                "Human: How does a telescope work? Assistant:",
                "Human: Why do birds migrate south for the winter? Assistant:"],
    "Chinese": ["Human: 请用几句话介绍一下微软? Assistant:",
                "Human: 用几句话向6岁的孩子解释登月。 Assistant:",
                "Human: 写一首关于一只聪明的青蛙的短诗。 Assistant:",
                "Human: 谁是1955年的美国总统? Assistant:",
                "Human: 望远镜是如何工作的? Assistant:",
                "Human: 鸟类为什么要南迁过冬? Assistant:"],
    "Japanese": ["Human: マイクロソフトについて簡単に教えてください。 Assistant:",
                 "Human: 6歳児に月面着陸を短い文で説明する。 Assistant:",
                 "Human: 賢いカエルについて短い詩を書いてください。 Assistant:",
                 "Human: 1955年のアメリカ合衆国大統領は誰? Assistant:",
                 "Human: 望遠鏡はどのように機能しますか? Assistant:",
                 "Human: 鳥が冬に南に移動するのはなぜですか? Assistant:"],
}

STRATEGIES = ("greedy", "beam", "multinomial", "diverse_beam", "contrastive")


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def device_and_dtype(dtype: str = "fp32") -> tuple[torch.device, torch.dtype]:
    """Where and in what precision to load: the accelerator (``sftlib.dist.accelerator_name``) in
    ``dtype``; on a CPU fp32 only (the original always loaded fp32, on its first GPU)."""
    from sftlib.dist import accelerator_name, local_rank

    name = accelerator_name()
    if name == "cpu":
        if dtype != "fp32":
            raise SFTError(f"--dtype {dtype} on a CPU: half-precision generation is slow or unsupported there; "
                           "use --dtype fp32 (or run on a GPU)")
        return torch.device("cpu"), torch.float32
    return torch.device(name, local_rank() if name == "cuda" else 0), DTYPES[dtype]


def load_model(path: str, device="cpu", dtype=torch.float32):
    """A saved or hub model and its tokenizer, on ``device`` in ``dtype``, in eval mode, left-padded for batches."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, device_map={"": torch.device(device)})
    except OSError as err:
        raise SFTError(f"cannot load model {path!r}: {str(err).splitlines()[0]}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return model.eval(), tokenizer


def generation_kwargs(strategy: str, num_beams: int = 1, num_beam_groups: int = 1, top_k: int = 4,
                      penalty_alpha: float = 0.6, num_return_sequences: int = 1) -> dict:
    """The options of each decoding strategy in the original file (its defaults where it sets them)."""
    if strategy == "greedy":
        return {"strategy": strategy, "do_sample": False, "num_beams": 1}
    if strategy == "beam":
        return {"strategy": strategy, "do_sample": False, "num_beams": max(num_beams, 2),
                "num_return_sequences": num_return_sequences}
    if strategy == "multinomial":
        return {"strategy": strategy, "do_sample": True, "num_beams": 1, "num_return_sequences": num_return_sequences}
    if strategy == "diverse_beam":
        groups = max(num_beam_groups, 2)
        return {"strategy": strategy, "num_beams": max(num_beams, 2 * groups), "num_beam_groups": groups,
                "diversity_penalty": 1.0, "num_return_sequences": num_return_sequences}
    if strategy == "contrastive":
        return {"strategy": strategy, "top_k": max(top_k, 2), "penalty_alpha": penalty_alpha}
    raise SFTError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int = 100, batch_size: int = 64,
             strategy: str = "greedy", **kwargs) -> list[str]:
    """The continuation of each prompt (special tokens removed).

    Greedy, beam and multinomial run through ``model.generate`` in batches with left padding (greedy
    even where the model's generation config samples); diverse beam and contrastive search use
    sftlib.decoding, one prompt at a time.
    """
    from sftlib import decoding

    out = []
    if strategy in ("diverse_beam", "contrastive"):
        for prompt in prompts:
            ids = tokenizer(prompt, return_tensors="pt").input_ids.to(model.device)
            if strategy == "contrastive":
                seqs = [decoding.contrastive_search(model, ids, max_new_tokens=max_new_tokens,
                                                    eos_token_id=tokenizer.eos_token_id, **kwargs)[0]]
            else:
                seqs = decoding.diverse_beam_search(model, ids, max_new_tokens=max_new_tokens,
                                                    eos_token_id=tokenizer.eos_token_id, **kwargs)
            out += [tokenizer.decode(s[ids.shape[1]:], skip_special_tokens=True) for s in seqs]
        return out
    if strategy == "greedy":
        kwargs.setdefault("do_sample", False)
    for i in range(0, len(prompts), batch_size):
        enc = tokenizer(prompts[i:i + batch_size], return_tensors="pt", padding=True).to(model.device)
        ids = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id, **kwargs)
        out += tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return out


def normalise(text: str) -> str:
    """The answer part of a response: up to the next turn, surrounding spaces removed."""
    return text.split("\n\nHuman:")[0].split("Human:")[0].strip()


def exact_match(model, tokenizer, rows: list[dict], max_new_tokens: int = 24) -> tuple[float, list[dict]]:
    """Share of rows whose greedy answer equals ``chosen`` exactly: the answer cut at the next
    ``Human:`` turn (``normalise``), both sides stripped of surrounding spaces."""
    answers = generate(model, tokenizer, [r["prompt"] for r in rows], max_new_tokens=max_new_tokens,
                       do_sample=False)
    results = [{"prompt": r["prompt"], "expected": r["chosen"].strip(), "got": normalise(a),
                "family": r.get("family", "")} for r, a in zip(rows, answers)]
    for r in results:
        r["correct"] = r["got"] == r["expected"]
    return sum(r["correct"] for r in results) / max(len(results), 1), results


def print_utils(gen_output: list[str]) -> None:
    for text in gen_output:
        print(text)
        print()


def prompt_eval(args, model_baseline, model_fintuned, tokenizer, device, prompts) -> None:
    """The original's printed layout: each prompt's baseline then fine-tuned generation."""
    kwargs = generation_kwargs(args.strategy, args.num_beams, args.num_beam_groups, args.top_k,
                               args.penalty_alpha, args.num_return_sequences)
    label = args.strategy.replace("_", " ").title()
    for prompt in prompts:
        print(f"==========Baseline: {label}=========")
        print_utils([prompt + t for t in generate(model_baseline, tokenizer, [prompt], args.max_new_tokens, **kwargs)])
        print(f"==========finetune: {label}=========")
        print_utils([prompt + t for t in generate(model_fintuned, tokenizer, [prompt], args.max_new_tokens, **kwargs)])
        print("====================prompt end=============================")
        print()
        print()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Eval the finetued SFT model")
    p.add_argument("--model_name_or_path_baseline", type=str, required=True)
    p.add_argument("--model_name_or_path_finetune", type=str, required=True)
    p.add_argument("--strategy", choices=STRATEGIES, default="greedy")
    p.add_argument("--num_beams", type=int, default=1)
    p.add_argument("--num_beam_groups", type=int, default=1)
    p.add_argument("--top_k", type=int, default=4)
    p.add_argument("--penalty_alpha", type=float, default=0.6)
    p.add_argument("--num_return_sequences", type=int, default=1)
    p.add_argument("--max_new_tokens", type=int, default=100)
    p.add_argument("--language", type=str, default="English", choices=sorted(PROMPTS))
    p.add_argument("--prompt", action="append", default=None, metavar="TEXT",
                   help="a prompt to generate from, instead of --language's (repeat it for several)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32",
                   help="precision on the accelerator (the original: fp32); a CPU runs fp32 only")
    p.add_argument("--eval_file", type=str, default=None,
                   help="json-lines rows (prompt, chosen): also print both exact-match scores")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    device, dtype = device_and_dtype(args.dtype)
    model_baseline, tokenizer = load_model(args.model_name_or_path_baseline, device, dtype)
    model_fintuned, _ = load_model(args.model_name_or_path_finetune, device, dtype)
    if device.type != "cpu":  # the original printed nothing here; on a GPU, say where the models went
        print(f"models on {device} in {args.dtype}")
    prompt_eval(args, model_baseline, model_fintuned, tokenizer, device, args.prompt or PROMPTS[args.language])
    if args.eval_file:
        from sftlib.data import read_json_rows

        rows = read_json_rows(args.eval_file)
        for name, model in (("baseline", model_baseline), ("finetune", model_fintuned)):
            score, _ = exact_match(model, tokenizer, rows)
            print(f"exact match ({name}): {score:.1%} of {len(rows)} prompts")


if __name__ == "__main__":
    run(main)
