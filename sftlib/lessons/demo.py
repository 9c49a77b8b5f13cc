"""`make demo`: fine-tune tiny OPT with DeepSpeed on this machine and show what changed.

Builds the toy world (first run only), runs ``sftlib.train`` on one CPU rank, compares baseline and
fine-tuned answers on held-out prompts, and writes ``outputs/demo/``: the saved model, a loss
curve and a markdown report.

    python -m sftlib.lessons.demo [--out outputs/demo]

Explained in notebooks/00_quickstart.ipynb.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from sftlib.lessons.train_args import demo_args


def demo_train_args(paths: dict, out: Path) -> list[str]:
    """The full command line of the demo's training run: ``train_args.demo_args`` on the toy OPT and data."""
    return demo_args(paths["opt"], paths["data"], out)


def train_for_page(argv: list[str], every: int = 24):
    """``sftlib.train.main(argv)`` with its log cut down for a notebook page; returns the run's ``History``.

    Printed: every ``every``-th step line, each evaluation's ``ppl:`` line and the save line (the
    whole log of a demo run is about 250 lines); ``History`` keeps every step, for a plot.
    """
    import contextlib
    import io

    from sftlib import train

    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):
            history = train.main(argv)
    except BaseException:
        print(log.getvalue()[-3000:])  # a failed run shows the end of its whole log
        raise
    for line in log.getvalue().splitlines():
        step = line.split(" | ")[0].removeprefix("step ")
        if (line.startswith("step ") and step.isdigit() and int(step) % every == 0) or \
                line.startswith(("ppl: ", "saved to ")):
            print(line)
    return history


def perplexity_split(model, tokenizer, rows: list[dict]) -> dict:
    """Token-weighted perplexity of ``prompt + chosen + EOS`` over the prompt's tokens and over the answer's.

    The training log's perplexity mixes both; this shows where a model is still unsure. Returns
    ``{"prompt": ppl, "answer": ppl, "prompt_tokens": n, "answer_tokens": n}``.
    """
    import math

    import torch

    sums = {"prompt": [0.0, 0], "answer": [0.0, 0]}
    for r in rows:
        prompt_len = len(tokenizer(r["prompt"]).input_ids)
        ids = torch.tensor([tokenizer(r["prompt"] + r["chosen"] + tokenizer.eos_token).input_ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
        nll = -logp.gather(1, ids[0, 1:, None])[:, 0]  # position i predicts token i + 1
        for part, piece in (("prompt", nll[:prompt_len - 1]), ("answer", nll[prompt_len - 1:])):
            sums[part][0] += piece.sum().item()
            sums[part][1] += piece.numel()
    return {**{k: math.exp(total / max(n, 1)) for k, (total, n) in sums.items()},
            **{f"{k}_tokens": n for k, (_, n) in sums.items()}}


def examples(rows: list[dict]) -> list[dict]:
    """One held-out row per task family, for the side-by-side table."""
    seen, picked = set(), []
    for r in rows:
        if r["family"] not in seen:
            seen.add(r["family"])
            picked.append(r)
    return picked


def plot_history(history: dict, path: Path) -> None:
    """Training loss per step and evaluation perplexity per epoch, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    a.plot(history["step"], history["loss"])
    a.set(xlabel="step", ylabel="training loss", title="SFT loss")
    b.plot([e["epoch"] for e in history["eval"]], [e["ppl"] for e in history["eval"]], marker="o")
    b.set(xlabel="epoch", ylabel="perplexity", yscale="log", title="eval perplexity")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _md_table(rows: list[dict], base: list[dict], tuned: list[dict]) -> list[str]:
    lines = ["| prompt | expected | baseline | fine-tuned |", "|---|---|---|---|"]
    for r, b, t in zip(rows, base, tuned):
        cells = [r["prompt"].replace("\n\nHuman: ", "").replace("\n\nAssistant:", ""), r["chosen"].strip(),
                 b["got"][:60], t["got"][:60]]
        lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return lines


def run(out: str | Path = "outputs/demo") -> dict:
    """The whole demo; returns the scores and timings it reports."""
    from sftlib import prompt_eval, train
    from sftlib.lessons import toy

    out = Path(out)
    t0 = time.time()
    paths = toy.ensure_toy_world(("opt",))
    t_world = time.time() - t0
    history = train.main(demo_train_args(paths, out))
    t_train = time.time() - t0 - t_world

    rows = toy.load_rows(paths["eval"])
    baseline, tokenizer = prompt_eval.load_model(str(paths["opt"]))
    tuned, _ = prompt_eval.load_model(str(out / "model"))
    base_score, base_res = prompt_eval.exact_match(baseline, tokenizer, rows)
    tuned_score, tuned_res = prompt_eval.exact_match(tuned, tokenizer, rows)
    picks = examples(rows)
    idx = [rows.index(r) for r in picks]
    plot_history(history, out / "loss.png")
    total = time.time() - t0

    table = _md_table(picks, [base_res[i] for i in idx], [tuned_res[i] for i in idx])
    report = [
        "# SFT demo report", "",
        f"Tiny OPT ({paths['opt']}) fine-tuned with DeepSpeed (ZeRO-0, fp32, one CPU rank) on "
        f"{history['train_samples']} toy instructions; scored on {len(rows)} held-out prompts.", "",
        "| model | exact match |", "|---|---|",
        f"| baseline (pretrained on prose only) | {base_score:.1%} |",
        f"| fine-tuned | {tuned_score:.1%} |", "",
        *table, "",
        f"Eval perplexity: {history['eval'][0]['ppl']:.2f} before, {history['eval'][-1]['ppl']:.2f} after.",
        f"Time: toy world {t_world:.0f} s, training {t_train:.0f} s, whole demo {total:.0f} s.", "",
        "Training command: `python -m sftlib.train " + " ".join(demo_train_args(paths, out)) + "`", "",
        "![loss](loss.png)", "",
    ]
    (out / "report.md").write_text("\n".join(report), encoding="utf-8")

    print()
    print("\n".join(table))
    print()
    print(f"exact match on {len(rows)} held-out prompts: baseline {base_score:.1%}, fine-tuned {tuned_score:.1%}")
    print(f"demo took {total:.0f} s (toy world {t_world:.0f} s, training {t_train:.0f} s)")
    print(f"wrote {out / 'model'}, {out / 'loss.png'}, {out / 'report.md'}")
    return {"baseline": base_score, "finetuned": tuned_score, "seconds": total, "eval_prompts": len(rows)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Fine-tune tiny OPT on the toy set and report what changed.")
    p.add_argument("--out", default="outputs/demo", help="output folder")
    run(p.parse_args(argv).out)


if __name__ == "__main__":
    from sftlib.cli import run as run_cli

    run_cli(main)
