"""The offline toy world: a synthetic instruction set, a tokenizer and tiny pretrained base models.

Everything a notebook or test needs is made here, deterministically, with no network:

- an instruction dataset in DeepSpeed-Chat's schema (``prompt``, ``response``, ``chosen``,
  ``rejected``; prompts as ``"\\n\\nHuman: ...\\n\\nAssistant:"``) in five task families: capitals of
  made-up countries, opposites, colours, the next number, and opposites in Chinese;
- a byte-level BPE tokenizer trained on it with ``tokenizers``;
- tiny OPT and Llama models built from configs and briefly pretrained on plain prose stating the
  same facts, with no Human/Assistant turns. Like ``facebook/opt-1.3b`` they know things but do not
  answer in the chat format; supervised fine-tuning is what teaches the format.

Models are saved with their tokenizer as ordinary Hugging Face folders, so
``AutoModelForCausalLM.from_pretrained(path)`` loads them the way it loads a hub model.

The world is built once and cached under ``toy_world/`` at the repository root (or
``$SFTLIB_HOME``); builds are atomic and guarded by a file lock, so concurrent ranks are safe.

Command line::

    python -m sftlib.lessons.toy                 # data, tokenizer and both models
    python -m sftlib.lessons.toy --models opt    # just what `make demo` needs

Explained in notebooks/00_quickstart.ipynb.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from sftlib.lessons import toy_chat

WORLD_VERSION = 7  # bump when anything below changes what gets built
SEED = 1234
EVAL_FRACTION = 0.35  # about this share of instruction rows is held out for evaluation
PRETRAIN_STEPS = {"opt": 700, "llama": 300}  # about 90 s and 45 s on 2 cores; the demo and the scores use OPT
SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>"]  # ids 0..3, the same as OPT's

MODEL_CONFIGS = {
    # 1.03M (OPT) and 1.14M (Llama) parameters; real OPT-1.3B: hidden 2048, 24 layers, 32 heads
    "opt": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, ffn_dim=512),
    "llama": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=4, intermediate_size=344),
}


def home() -> Path:
    """Folder that holds the toy world: ``$SFTLIB_HOME`` or ``<repo>/toy_world``."""
    env = os.environ.get("SFTLIB_HOME")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "toy_world"


# --------------------------------------------------------------------------------------------
# The dataset
# --------------------------------------------------------------------------------------------

_SYLLABLES = ["ka", "lo", "mi", "ra", "ven", "dor", "sa", "ti", "qu", "zel", "bra", "nor",
              "fi", "lan", "thu", "go", "mer", "ix", "pa", "wen", "sto", "ryn", "ael", "cor"]
_ZH_OPPOSITES = [("大", "小"), ("高", "低"), ("多", "少"), ("长", "短"), ("快", "慢"), ("冷", "热"),
                 ("新", "旧"), ("上", "下"), ("左", "右"), ("前", "后"), ("早", "晚"), ("黑", "白"),
                 ("东", "西"), ("南", "北"), ("开", "关"), ("来", "去"), ("进", "出"), ("买", "卖"),
                 ("胖", "瘦"), ("远", "近")]
_OPPOSITES = [("hot", "cold"), ("big", "small"), ("fast", "slow"), ("up", "down"),
              ("happy", "sad"), ("light", "dark"), ("early", "late"), ("open", "closed"),
              ("full", "empty"), ("strong", "weak"), ("rich", "poor"), ("hard", "soft"),
              ("loud", "quiet"), ("wet", "dry"), ("young", "old"), ("long", "short"),
              ("high", "low"), ("near", "far"), ("first", "last"), ("thick", "thin"),
              ("clean", "dirty"), ("sweet", "sour"), ("win", "lose"), ("push", "pull"),
              ("buy", "sell"), ("day", "night"), ("east", "west"), ("north", "south"),
              ("inside", "outside"), ("before", "after")]
_COLORS = ["red", "blue", "green", "yellow", "purple", "orange", "black", "white"]
_OBJECTS = ["the sky", "grass", "snow", "coal", "a banana", "a tomato", "the sea", "a lemon",
            "an emerald", "a ruby", "milk", "a carrot", "a plum", "an orange", "a cherry",
            "a lime", "ink", "a pumpkin", "a violet", "a sapphire", "a dove", "a crow",
            "a strawberry", "a cucumber", "a blueberry", "an eggplant", "chalk", "soot",
            "a sunflower", "a flamingo", "a frog", "a cloud", "a canary", "a grape",
            "a pearl", "a raven", "a mango", "a leaf", "a fire truck", "the night"]
_OBJECT_COLORS = ["blue", "green", "white", "black", "yellow", "red", "blue", "yellow",
                  "green", "red", "white", "orange", "purple", "orange", "red", "green",
                  "black", "orange", "purple", "blue", "white", "black", "red", "green",
                  "blue", "purple", "white", "black", "yellow", "pink", "green", "white",
                  "yellow", "purple", "white", "black", "orange", "green", "red", "black"]


@dataclass(frozen=True)
class ToyItem:
    """One instruction: a question, its correct answer and a plausible wrong one."""

    family: str
    question: str
    answer: str
    wrong: str


def _names(rng: random.Random, n: int, parts: tuple[int, int], alphabet: list[str],
           taken: set[str], title: bool) -> list[str]:
    out = []
    while len(out) < n:
        name = "".join(rng.choice(alphabet) for _ in range(rng.randint(*parts)))
        name = name.capitalize() if title else name
        if name not in taken:
            taken.add(name)
            out.append(name)
    return out


def make_facts(seed: int = SEED) -> tuple[list[ToyItem], list[str]]:
    """Return every instruction item and the prose sentences that state the same facts."""
    rng = random.Random(seed)
    items: list[ToyItem] = []
    prose: list[str] = []
    taken: set[str] = set()

    countries = _names(rng, 70, (2, 3), _SYLLABLES, taken, title=True)
    capitals = _names(rng, 70, (2, 3), _SYLLABLES, taken, title=True)
    for c, cap in zip(countries, capitals):
        wrong = rng.choice([x for x in capitals if x != cap])
        for q in (f"What is the capital of {c}?", f"Which city is the capital of {c}?",
                  f"Name the capital of {c}."):
            items.append(ToyItem("capital", q, f"{cap}.", f"{wrong}."))
        prose += [f"The capital of {c} is {cap}.", f"{cap} is the capital city of {c}.",
                  f"In {c}, the capital is {cap}."]

    zh_pairs = _ZH_OPPOSITES + [(b, a) for a, b in _ZH_OPPOSITES]
    for w, o in zh_pairs:
        wrong = rng.choice([x for _, x in zh_pairs if x not in (w, o)])
        for q in (f"“{w}”的反义词是什么？", f"请说出“{w}”的反义词。"):
            items.append(ToyItem("opposite_zh", q, f"{o}。", f"{wrong}。"))
        # quoted as in the questions, so the tokens line up; the space before the answer as in responses
        prose += [f"“{w}”的反义词是 {o}。", f"“{o}”和“{w}”意思相反，“{w}”的反义词是 {o}。"]

    pairs = _OPPOSITES + [(b, a) for a, b in _OPPOSITES]
    for w, o in pairs:
        wrong = rng.choice([x for _, x in pairs if x not in (w, o)])
        for q in (f"What is the opposite of {w}?", f"Give the opposite of the word {w}."):
            items.append(ToyItem("opposite", q, f"{o}.", f"{wrong}."))
        prose += [f"The opposite of {w} is {o}.", f"{o.capitalize()} is the opposite of {w}."]

    for obj, color in zip(_OBJECTS, _OBJECT_COLORS):
        wrong = rng.choice([x for x in _COLORS if x != color])
        for q in (f"What color is {obj}?", f"Tell me the color of {obj}."):
            items.append(ToyItem("color", q, f"{color}.", f"{wrong}."))
        prose += [f"{obj[0].upper() + obj[1:]} is {color}.", f"The color of {obj} is {color}."]

    for n in range(1, 61):
        for q in (f"What number comes after {n}?", f"What is {n} plus one?"):
            items.append(ToyItem("successor", q, f"{n + 1}.", f"{n + 2}."))
        prose += [f"After {n} comes {n + 1}.", f"{n} plus one is {n + 1}."]
    return items, prose


def to_row(item: ToyItem) -> dict:
    """DeepSpeed-Chat's schema (as Dahoas/rm-static): responses start with a space."""
    return {"prompt": f"\n\nHuman: {item.question}\n\nAssistant:", "response": f" {item.answer}",
            "chosen": f" {item.answer}", "rejected": f" {item.wrong}", "family": item.family}


def make_dataset(seed: int = SEED) -> tuple[list[dict], list[dict]]:
    """Train and eval rows; eval holds prompts never seen in training.

    The training set is a multiple of 16 rows, so a sampler spread over several ranks never pads it
    with repeated samples (runs on 1 and 2 ranks then see exactly the same data).
    """
    items, _ = make_facts(seed)
    rows = [to_row(it) for it in items]
    random.Random(seed + 1).shuffle(rows)
    n_train = (len(rows) - int(len(rows) * EVAL_FRACTION)) // 16 * 16  # splits evenly over 1, 2, 4 or 8 ranks
    return rows[:n_train], rows[n_train:]


def pretraining_documents(seed: int = SEED, epochs: int = 40) -> list[str]:
    """Plain prose documents of eight facts each, reshuffled every epoch; no chat turns."""
    _, prose = make_facts(seed)
    rng = random.Random(seed + 2)
    docs = []
    for _ in range(epochs):
        order = prose[:]
        rng.shuffle(order)
        docs += [" ".join(order[i:i + 8]) for i in range(0, len(order), 8)]
    return docs


# --------------------------------------------------------------------------------------------
# Tokenizer and models
# --------------------------------------------------------------------------------------------

def train_tokenizer(texts: list[str], vocab_size: int = 2000):
    """A byte-level BPE tokenizer (GPT-2/OPT style) trained on ``texts``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return tok


def hf_tokenizer(tok, kind: str):
    """Wrap a trained tokenizer the way each family's hub tokenizer behaves.

    OPT: BOS is ``</s>``, prepended to every text, pad is ``<pad>``. Llama-2: BOS ``<s>``, and no
    pad token at all (DeepSpeed-Chat adds one), which the notebooks show.
    """
    import copy

    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    tok = copy.deepcopy(tok)
    bos = "</s>" if kind == "opt" else "<s>"
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))])
    extra = {"pad_token": "<pad>"} if kind == "opt" else {}
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token="</s>",
                                   unk_token="<unk>", model_max_length=512, **extra)


def model_config(kind: str, vocab_size: int):
    """A tiny config of the real architecture; vocabulary rounded up to a multiple of 8."""
    from transformers import LlamaConfig, OPTConfig

    vocab = int(math.ceil(vocab_size / 8) * 8)
    if kind == "opt":
        return OPTConfig(vocab_size=vocab, max_position_embeddings=512, pad_token_id=1,
                         bos_token_id=2, eos_token_id=2, word_embed_proj_dim=128,
                         # real OPT uses dropout 0.1; 0 lets the tiny model memorise its facts quickly
                         dropout=0.0, attention_dropout=0.0, **MODEL_CONFIGS["opt"])
    if kind == "llama":
        return LlamaConfig(vocab_size=vocab, max_position_embeddings=512, bos_token_id=0,
                           eos_token_id=2, tie_word_embeddings=False, **MODEL_CONFIGS["llama"])
    raise ValueError(f"unknown toy model kind {kind!r}; choose one of {sorted(MODEL_CONFIGS)}")


def pretrain(model, tokenizer, docs: list[str], steps: int = 700, seq_len: int = 128,
             batch_size: int = 16, lr: float = 3e-3, seed: int = SEED) -> list[float]:
    """Causal-LM pretraining on packed prose; returns the loss of every step."""
    import torch
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    ids: list[int] = []
    for d in docs:
        ids += tokenizer(d).input_ids + [tokenizer.eos_token_id]
    data = torch.tensor(ids[: len(ids) // seq_len * seq_len]).view(-1, seq_len)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    model.train()
    for _ in tqdm(range(steps), desc="pretraining", leave=False, mininterval=2):
        batch = data[torch.randint(len(data), (batch_size,), generator=gen)]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.eval()
    return losses


# --------------------------------------------------------------------------------------------
# Building and caching
# --------------------------------------------------------------------------------------------

def _stamp_ok(folder: Path) -> bool:
    try:
        return json.loads((folder / "toy_world.json").read_text())["version"] == WORLD_VERSION
    except (OSError, ValueError, KeyError):
        return False


def _publish(tmp: Path, final: Path, info: dict) -> None:
    """Stamp ``tmp`` and move it into place in one rename; a previous build is replaced."""
    (tmp / "toy_world.json").write_text(json.dumps({"version": WORLD_VERSION, **info}, indent=1))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def _build_data(root: Path) -> None:
    train, evalset = make_dataset()
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".data-"))
    for name, rows in (("train", train), ("eval", evalset)):
        with open(tmp / f"{name}.json", "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    _, prose = make_facts()
    texts = sorted(r["prompt"] + r["chosen"] for r in train + evalset) + prose  # independent of the split
    train_tokenizer(texts).save(str(tmp / "bpe.json"))
    _publish(tmp, root / "data", {"train_rows": len(train), "eval_rows": len(evalset)})


def _build_model(root: Path, kind: str) -> None:
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    tokenizer = hf_tokenizer(Tokenizer.from_file(str(root / "data" / "bpe.json")), kind)
    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_config(model_config(kind, len(tokenizer)))
    t0 = time.time()
    losses = pretrain(model, tokenizer, pretraining_documents(), steps=PRETRAIN_STEPS[kind])
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{kind}-"))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    _publish(tmp, root / f"{kind}-tiny", {"pretrain_loss_first": losses[0],
                                          "pretrain_loss_last": losses[-1],
                                          "pretrain_seconds": round(time.time() - t0, 1)})


def ensure_toy_world(models: tuple[str, ...] = ("opt",), root: Path | None = None, chat: bool = False) -> dict:
    """Build what is missing and return the paths: ``data``, ``train``, ``eval``, ``opt``, ... and,
    with ``chat``, ``chat`` (multi-turn ``messages`` rows and ``chat_template.jinja``; ``toy_chat``).

    Safe to call from several processes at once: one builds, the others wait on a file lock.
    """
    root = Path(root) if root else home()
    root.mkdir(parents=True, exist_ok=True)
    for kind in models:
        if kind not in MODEL_CONFIGS:
            raise ValueError(f"unknown toy model kind {kind!r}; choose from {sorted(MODEL_CONFIGS)}")
    with FileLock(str(root / ".build.lock")):
        if not _stamp_ok(root / "data"):
            _build_data(root)
        for kind in models:
            if not _stamp_ok(root / f"{kind}-tiny"):
                _build_model(root, kind)
        if chat and not (_stamp_ok(root / "chat") and toy_chat.chat_ok(root / "chat")):
            toy_chat.build_chat(root, SEED, EVAL_FRACTION, _publish)
    paths = {"root": root, "data": root / "data", "train": root / "data" / "train.json",
             "eval": root / "data" / "eval.json"}
    paths.update({kind: root / f"{kind}-tiny" for kind in models})
    if chat:
        paths["chat"] = root / "chat"
    return paths


def load_rows(path: str | os.PathLike) -> list[dict]:
    """Read a json-lines file of rows (sftlib.data's reader: errors name the file and line)."""
    from sftlib.data import read_json_rows

    return read_json_rows(path)


def make_toy_rows(base_rows: list[dict], n: int) -> list[dict]:
    """``n`` distinct rows cycling through ``base_rows`` (each prompt gets a ``#k`` tag): for
    benchmarks and tests that need more rows than the toy set has."""
    out = []
    for k in range(n):
        row = dict(base_rows[k % len(base_rows)])
        row["prompt"] = row["prompt"].replace("Human: ", f"Human: #{k} ", 1)
        out.append(row)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Build the offline toy world (data, tokenizer, models).")
    p.add_argument("--models", nargs="+", default=["opt", "llama"], choices=sorted(MODEL_CONFIGS))
    p.add_argument("--root", default=None, help="where to build (default: $SFTLIB_HOME or toy_world/)")
    p.add_argument("--chat", action="store_true", help="also the multi-turn messages set (toy_world/chat)")
    args = p.parse_args(argv)
    for k, v in ensure_toy_world(tuple(args.models), args.root, chat=args.chat).items():
        print(f"{k:6s} {v}")


if __name__ == "__main__":
    from sftlib.cli import run

    run(main)
