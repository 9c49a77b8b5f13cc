"""Helpers of ``bench/gpu_smoke.sh``: build the ~125M models offline, compare a resumed run, print the table.

    python bench/gpu_smoke_tools.py models OUT          # OUT/opt-125m, OUT/llama-125m (+ OUT/llama-125m-fa)
    python bench/gpu_smoke_tools.py compare REF GOT     # a resumed run's weights against the uninterrupted run's
    python bench/gpu_smoke_tools.py table OUT           # one row per OUT/*.row.json (+ its log and memory trace)

The models are OPT-125m's and a Llama of the same size's configurations with fresh weights and the
toy tokenizer (no hub access); what a smoke test needs is the shapes and the code paths, not the
pretrained weights.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

OPT_125M = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "ffn_dim": 3072,
            "word_embed_proj_dim": 768, "max_position_embeddings": 2048, "do_layer_norm_before": True,
            "dropout": 0.1, "attention_dropout": 0.0, "activation_function": "relu"}
LLAMA_125M = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "num_key_value_heads": 12,
              "intermediate_size": 2048, "max_position_embeddings": 4096, "tie_word_embeddings": True}


def make_models(out: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, OPTConfig

    from sftlib.lessons.toy import ensure_toy_world
    from sftlib.model import load_hf_tokenizer

    world = ensure_toy_world(("opt", "llama"))
    tok = load_hf_tokenizer(str(world["opt"]))
    # OPT-125m's vocabulary size (the toy tokenizer uses the first ids): 125M parameters, as the hub model has
    ids = dict(vocab_size=max(len(tok), 50272), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
               pad_token_id=tok.pad_token_id)
    configs = {"opt-125m": OPTConfig(**OPT_125M, **ids), "llama-125m": LlamaConfig(**LLAMA_125M, **ids)}
    try:
        import flash_attn  # noqa: F401

        configs["llama-125m-fa"] = LlamaConfig(**LLAMA_125M, **ids, attn_implementation="flash_attention_2")
    except ImportError:
        pass
    for name, config in configs.items():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
        model.save_pretrained(Path(out) / name)
        if name.endswith("-fa"):  # the folder's config.json asks for FlashAttention when loaded
            path = Path(out) / name / "config.json"
            path.write_text(json.dumps({**json.loads(path.read_text()), "attn_implementation": "flash_attention_2"}))
        tok.save_pretrained(Path(out) / name)
        print(f"{name}: {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters -> {Path(out) / name}")


def compare(ref: str, got: str, atol: float = 1e-2) -> int:
    """0 when the resumed run's final weights match the uninterrupted run's (GPU kernels are not bitwise
    deterministic, so within ``atol``); prints the largest difference either way."""
    from safetensors.torch import load_file

    a, b = load_file(str(Path(ref) / "model.safetensors")), load_file(str(Path(got) / "model.safetensors"))
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    ok = a.keys() == b.keys() and worst <= atol
    print(f"resume vs uninterrupted: largest weight difference {worst:.3g} ({'PASS' if ok else 'FAIL'}, atol {atol})")
    return 0 if ok else 1


def table(out: str, peak_tflops: float) -> str:
    """One markdown row per ``*.row.json`` that gpu_smoke.sh wrote (name, rc, log, memory trace)."""
    from sftlib.logs import parse_log

    lines = ["| row | samples/s | TFLOPs | MFU | peak GPU memory GiB | result |", "|---|---|---|---|---|---|"]
    for row in sorted((json.loads(p.read_text()) for p in Path(out).glob("*.row.json")), key=lambda r: r["n"]):
        log = Path(row["log"]).read_text(errors="replace") if Path(row["log"]).exists() else ""
        df = parse_log(log)
        steps = df[df.kind == "sft_step"]
        steps = steps.iloc[2:] if len(steps) > 4 else steps
        rate = f"{steps['samples_per_s'].median():.1f}" if len(steps) else "-"
        tf = steps["tflops"].median() if len(steps) else float("nan")
        mem = Path(row["mem"]).read_text().split() if Path(row["mem"]).exists() else []
        peak = f"{max(float(x) for x in mem) / 1024:.1f}" if mem else "-"
        tf_text, mfu = (f"{tf:.1f}", f"{100 * tf / peak_tflops:.1f}%") if tf == tf else ("-", "-")
        result = {0: "PASS", 125: "SKIPPED (time budget)"}.get(row["rc"], f"FAIL (rc {row['rc']})")
        lines.append(f"| {row['name']} | {rate} | {tf_text} | {mfu} | {peak} | {result} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["models"]:
        make_models(argv[1])
        return 0
    if argv[:1] == ["compare"]:
        return compare(argv[1], argv[2])
    if argv[:1] == ["table"]:
        print(table(argv[1], float(argv[2]) if len(argv) > 2 else 989.0))
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main())
