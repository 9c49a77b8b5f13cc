"""Read DeepSpeed / DeepSpeed-Chat training logs into a pandas DataFrame, and plot them.

One row per recognised line; ``kind`` says which:

=================  ==============================================================================
``launcher``       the launcher's ``runner.py`` / ``launch.py`` lines (command, world size, exits)
``eval_header``    ``***** Evaluating perplexity, Epoch k/N *****``
``ppl``            ``ppl: x`` (2023) or ``ppl: x, loss: y`` (later DeepSpeed-Chat and sftlib)
``token_ppl``      sftlib's ``token-weighted ppl: x`` (every label token counts once)
``epoch``          ``Beginning of Epoch k/N, Total Micro Batches m``
``overflow``       fp16 skipped steps: ``OVERFLOW! Rank 0 Skipping step. Attempted loss scale: ...``, either
                   ``reducing to b`` (``new_loss_scale``) or ``but hysteresis is h`` (``hysteresis``: the
                   scale stays); also the ``Overflow detected. Skipping step.`` form
``loss_scale``     ``Grad overflow on iteration n`` / ``Reducing dynamic loss scale from a to b``
``ds_step``        DeepSpeed's ``step=..., skipped=..., lr=[...], mom=[...]``
``throughput``     the throughput timer: ``epoch=e/micro_step=m/global_step=g, RunningAvgSamplesPerSec=..``
``dschat_tput``    DeepSpeed-Chat's ``print_throughput``: ``... TFLOPs: x, Samples/sec: y ...``
``micro_loss``     ``--print_loss``: ``Epoch: e, Step: s, Rank: r, loss = x``
``sft_step``       sftlib's ``step N | loss X | 3.2k tok/s | 12 samples/s | 0.01 TFLOPs | lr 1.0e-04``
=================  ==============================================================================

Format drift between DeepSpeed releases (file:line tags, ``np.float64(...)`` in lists, ``[rankN]:``
prefixes, tqdm's carriage returns) is tolerated: patterns look at the message, not the prefix.

    python -m sftlib.logs LOG --plot out.png

Explained in notebooks/06_hybrid_engine_and_logs.ipynb.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pandas as pd

from sftlib.cli import run
from sftlib.errors import SFTError

COLUMNS = ["line", "kind", "time", "rank", "epoch", "num_epochs", "step", "micro_step", "loss", "ppl", "lr",
           "mom", "skipped", "loss_scale", "new_loss_scale", "hysteresis", "samples_per_s", "avg_samples_per_s",
           "tokens_per_s", "tflops", "mem_gb", "max_mem_gb", "micro_batches", "world_size", "text"]

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|inf|nan"
_FLOAT = re.compile(rf"(?<![\w.])(?:{_NUM})")
_TIME = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)[,.](\d+)\]")
_RANK = re.compile(r"\[[Rr]ank ?(\d+)\]")
_KV = re.compile(r"(\w+)=([^,\s/]+)")

_EVAL = re.compile(r"\*+ Evaluating perplexity, Epoch (\d+)/(\d+) \*+")
_PPL = re.compile(rf"(?:^|\] )ppl: ({_NUM})(?:, loss: ({_NUM}))?")
_TOKEN_PPL = re.compile(rf"token-weighted ppl: ({_NUM})")
_EPOCH = re.compile(r"Beginning of Epoch (\d+)/(\d+), Total Micro Batches (\d+)")
_OVERFLOW = re.compile(r"OVERFLOW!|Overflow detected\. Skipping step")
_SCALE = re.compile(rf"Attempted loss scale: ({_NUM})(?:, reducing to ({_NUM})|, but hysteresis is (\d+))?")
_REDUCE = re.compile(rf"Reducing dynamic loss scale from ({_NUM}) to ({_NUM})")
_GRAD_OVERFLOW = re.compile(r"Grad overflow on iteration (\d+)")
_DS_STEP = re.compile(r"\bstep=(\d+), skipped=(\d+), lr=(\[.*?\]|\S+), mom=(.*)$")
_TPUT = re.compile(r"RunningAvgSamplesPerSec=|CurrSamplesPerSec=|\bSamplesPerSec=")
_TPUT_OLD_STEP = re.compile(r"\]\s*(\d+)/(\d+), ")  # 2021-era "epoch/micro_step, SamplesPerSec=..."
_DSCHAT = re.compile(rf"TFLOPs: ({_NUM}), Samples/sec: ({_NUM})")
_MICRO_LOSS = re.compile(rf"Epoch: (\d+), Step: (\d+), Rank: (\d+), loss = (?:tensor\()?({_NUM})")
_SFT_STEP = re.compile(rf"^step (\d+) \| loss ({_NUM})((?: \| [^|]+)*)$")
_LAUNCHER = re.compile(r"\[(?:runner|launch)\.py:\d+:\w+\]|\bexits successfully\b|\bexits with return code\b")
_WORLD = re.compile(r"\bdist_world_size=(\d+)")


def _floats(text: str) -> list[float]:
    return [float(x) for x in _FLOAT.findall(text)]


def _rate(value: str) -> float:
    """``3.2k`` -> 3200.0; ``12`` -> 12.0."""
    value = value.strip()
    scale = {"k": 1e3, "M": 1e6, "G": 1e9}.get(value[-1:], 1.0)
    return float(value[:-1] if scale != 1.0 else value) * scale


def _sft_fields(rest: str) -> dict:
    out = {}
    for field in filter(None, (f.strip() for f in rest.split("|"))):
        number, _, unit = field.partition(" ")
        key = {"tok/s": "tokens_per_s", "samples/s": "samples_per_s", "TFLOPs": "tflops"}.get(unit)
        if number == "lr":
            out["lr"] = float(unit)
        elif key:
            out[key] = _rate(number)
    return out


def _throughput(msg: str) -> dict:
    kv = dict(_KV.findall(msg))
    out = {}
    if "global_step" in kv:
        out["step"] = int(kv["global_step"].rstrip(","))
    if "micro_step" in kv:
        out["micro_step"] = int(kv["micro_step"].split("/")[0])
    if "epoch" in kv:
        out["epoch"] = int(kv["epoch"].split("/")[0])
    for key, col in (("CurrSamplesPerSec", "samples_per_s"), ("SamplesPerSec", "samples_per_s"),
                     ("RunningAvgSamplesPerSec", "avg_samples_per_s"), ("MemAllocated", "mem_gb"),
                     ("MaxMemAllocated", "max_mem_gb")):
        if key in kv:
            out[col] = float(re.sub(r"[A-Za-z]+$", "", kv[key].rstrip(",")) or "nan")
    if "step" not in out and (m := _TPUT_OLD_STEP.search(msg)):
        out["epoch"], out["micro_step"] = int(m[1]), int(m[2])
    return out


def parse_segment(text: str) -> dict | None:
    """The fields of one log line (one carriage-return segment), or None when nothing is recognised."""
    msg = re.sub(r"^\[rank\d+\]:\s*", "", text.strip())
    if not msg:
        return None
    row: dict = {}
    if m := _TIME.match(msg):
        row["time"] = pd.Timestamp(f"{m[1]}.{m[2]}")
    if m := _RANK.search(msg):
        row["rank"] = int(m[1])
    if m := _SFT_STEP.match(msg):
        return {**row, "kind": "sft_step", "step": int(m[1]), "loss": float(m[2]), **_sft_fields(m[3])}
    if m := _EVAL.search(msg):
        return {**row, "kind": "eval_header", "epoch": int(m[1]), "num_epochs": int(m[2])}
    if m := _PPL.search(msg):
        return {**row, "kind": "ppl", "ppl": float(m[1]), "loss": float(m[2]) if m[2] else None}
    if m := _TOKEN_PPL.search(msg):
        return {**row, "kind": "token_ppl", "ppl": float(m[1])}
    if m := _EPOCH.search(msg):
        return {**row, "kind": "epoch", "epoch": int(m[1]), "num_epochs": int(m[2]), "micro_batches": int(m[3])}
    if _OVERFLOW.search(msg):
        m = _SCALE.search(msg)
        return {**row, "kind": "overflow", "loss_scale": float(m[1]) if m else None,
                "new_loss_scale": float(m[2]) if m and m[2] else None,
                "hysteresis": int(m[3]) if m and m[3] else None,
                "rank": int(r[1]) if (r := re.search(r"OVERFLOW! Rank (\d+)", msg)) else row.get("rank")}
    if m := _REDUCE.search(msg):
        return {**row, "kind": "loss_scale", "loss_scale": float(m[1]), "new_loss_scale": float(m[2])}
    if m := _GRAD_OVERFLOW.search(msg):
        return {**row, "kind": "loss_scale", "step": int(m[1])}
    if m := _DS_STEP.search(msg):
        lr, mom = _floats(m[3]), _floats(m[4])
        return {**row, "kind": "ds_step", "step": int(m[1]), "skipped": int(m[2]),
                "lr": lr[0] if lr else None, "mom": mom[0] if mom else None}
    if _TPUT.search(msg):
        return {**row, "kind": "throughput", **_throughput(msg)}
    if m := _DSCHAT.search(msg):
        return {**row, "kind": "dschat_tput", "tflops": float(m[1]), "samples_per_s": float(m[2])}
    if m := _MICRO_LOSS.search(msg):
        return {**row, "kind": "micro_loss", "epoch": int(m[1]), "micro_step": int(m[2]), "rank": int(m[3]),
                "loss": float(m[4])}
    if _LAUNCHER.search(msg):
        w = _WORLD.search(msg)
        return {**row, "kind": "launcher", "world_size": int(w[1]) if w else None}
    return None


def parse_log(source) -> pd.DataFrame:
    """Parse a log file (path) or its text into a DataFrame with ``COLUMNS``; ``line`` is 1-based.

    ``df.attrs["world_size"]`` holds the launcher's ``dist_world_size`` when the log has it.
    """
    if isinstance(source, Path) or (isinstance(source, str) and "\n" not in source and Path(source).is_file()):
        source = Path(source).read_text(encoding="utf-8", errors="replace")
    rows = []
    for number, line in enumerate(source.split("\n"), start=1):
        for segment in line.split("\r"):
            row = parse_segment(segment)
            if row is not None:
                row["line"], row["text"] = number, segment.strip()
                rows.append(row)
    df = pd.DataFrame(rows, columns=COLUMNS)
    sizes = df["world_size"].dropna()
    df.attrs["world_size"] = int(sizes.iloc[-1]) if len(sizes) else None
    _attach_epochs(df)
    return df


def _attach_epochs(df: pd.DataFrame) -> None:
    """Give each ``ppl`` row the epoch of the evaluation header above it."""
    epoch = None
    for i in df.index:
        if df.at[i, "kind"] == "eval_header":
            epoch = df.at[i, "epoch"]
        elif df.at[i, "kind"] in ("ppl", "token_ppl") and pd.isna(df.at[i, "epoch"]):
            df.at[i, "epoch"] = epoch


def summary(df: pd.DataFrame) -> pd.Series:
    """How many lines of each kind."""
    return df["kind"].value_counts().sort_index()


def plot_log(df: pd.DataFrame, path=None, title: str = ""):
    """Loss, perplexity, learning rate, samples/s and skipped steps in one figure; saved when ``path``."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 5, figsize=(20, 3.4))
    _panel(axes[0], df, [("sft_step", "loss", "sftlib step"), ("micro_loss", "loss", "--print_loss")], "loss")
    ppl = df[df.kind == "ppl"]
    axes[1].plot(ppl["epoch"].astype(float), ppl["ppl"].astype(float), "o-")
    axes[1].set(title="perplexity per epoch", xlabel="epoch", yscale="log")
    _panel(axes[2], df, [("ds_step", "lr", "DeepSpeed step="), ("sft_step", "lr", "sftlib step")], "learning rate")
    _panel(axes[3], df, [("throughput", "samples_per_s", "throughput timer"),
                         ("sft_step", "samples_per_s", "sftlib step"),
                         ("dschat_tput", "samples_per_s", "DeepSpeed-Chat")], "samples/s")
    _panel(axes[4], df, [("ds_step", "skipped", "skipped (DeepSpeed)")], "skipped steps")
    over_at = df["step"].ffill().fillna(0)[df.kind == "overflow"]  # last step printed before each line
    if len(over_at):
        axes[4].step(over_at, range(1, len(over_at) + 1), where="post", color="red",
                     label=f"OVERFLOW lines (cumulative, {len(over_at)})")
        axes[4].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=90)
    return fig


def _panel(ax, df, series, title):
    for kind, column, label in series:
        part = df[(df.kind == kind) & df[column].notna()]
        if len(part):
            x = part["step"] if part["step"].notna().all() else range(len(part))
            ax.plot(x, part[column].astype(float), ".-", label=label)
    if ax.lines:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "not in this log", ha="center", va="center", transform=ax.transAxes, color="gray")
    ax.set(title=title, xlabel="step")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Summarise a DeepSpeed / DeepSpeed-Chat / sftlib training log.")
    p.add_argument("log", help="the log file (stdout of a training run)")
    p.add_argument("--plot", help="write the figure to this PNG")
    p.add_argument("--csv", help="write the parsed rows to this CSV")
    args = p.parse_args(argv)
    if not Path(args.log).is_file():
        raise SFTError(f"{args.log}: no such log file")
    df = parse_log(Path(args.log))
    print(summary(df).to_string())
    ppl = df[df.kind == "ppl"]
    if len(ppl):
        print("perplexity by epoch:", ", ".join(f"{e:g}: {p:.4g}" for e, p in zip(ppl.epoch, ppl.ppl)))
    if args.csv:
        df.to_csv(args.csv, index=False)
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        plot_log(df, args.plot, title=Path(args.log).name)
        print(f"figure written to {args.plot}")


if __name__ == "__main__":
    run(main)
