"""Notebook 07's task for a real model: answer with a JSON object, checked by exact match.

SmolLM2-135M-Instruct (``sftlib.gguf_import``) knows what a city is but answers "extract the city"
in prose or a Markdown code block. One step-1 run on a few hundred examples teaches it the exact
format ``{"city": "Lisbon"}``: a behaviour the base model does not have and a few minutes of CPU can
teach. Train and held-out rows use disjoint names and cities, so the held-out score measures the
format and the copying, not memorised answers.

The rows are written twice, as DeepSpeed-Chat's strings (``prompt``/``chosen``, Human/Assistant)
and as ``messages`` (rendered with the model's chat template, loss on the assistant turn only).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

CITIES = ["Lisbon", "Oslo", "Nairobi", "Lima", "Hanoi", "Dublin", "Cairo", "Quito", "Perth", "Kyoto",
          "Accra", "Porto", "Zagreb", "Dakar", "Bogota", "Tunis", "Riga", "Seville", "Osaka", "Krakow",
          "Havana", "Manila", "Vienna", "Santiago", "Lagos", "Tbilisi", "Bergen", "Denver", "Toronto", "Sofia",
          "Geneva", "Jakarta", "Madrid", "Warsaw", "Lyon", "Chennai", "Calgary", "Tallinn", "Beirut", "Austin"]
NAMES = ["Maria", "John", "Aiko", "Omar", "Lena", "Pedro", "Chen", "Fatima", "Igor", "Nina", "Kofi", "Sara",
         "Luis", "Mei", "Ahmed", "Olga", "Tom", "Priya", "Jonas", "Ana", "Ravi", "Elena", "Sam", "Yuki"]
SENTENCES = ["{n} moved to {c} in {y}.", "Last year {n} flew to {c} for a conference.",
             "{n} was born in {c} and still lives there.", "The train to {c} was late, {n} said.",
             "In {y}, {n} opened a small bakery in {c}.", "{n} spent the summer of {y} in {c}."]
INSTRUCTION = "Extract the city as JSON"


def make_rows(n: int, seed: int, cities: list[str], names: list[str]) -> list[dict]:
    """``n`` rows ``{"question", "answer"}``; the answer is ``{"city": ...}`` as compact json."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        city, name, sentence = rng.choice(cities), rng.choice(names), rng.choice(SENTENCES)
        text = sentence.format(n=name, c=city, y=rng.randint(1990, 2024))
        rows.append({"question": f'{INSTRUCTION}: "{text}"', "answer": json.dumps({"city": city})})
    return rows


def split_rows(n_train: int = 160, n_eval: int = 100, seed: int = 1234) -> tuple[list[dict], list[dict]]:
    """Train and held-out rows; held-out rows use the last quarter of the cities and names only."""
    kc, kn = len(CITIES) * 3 // 4, len(NAMES) * 3 // 4
    return (make_rows(n_train, seed, CITIES[:kc], NAMES[:kn]),
            make_rows(n_eval, seed + 1, CITIES[kc:], NAMES[kn:]))


def as_strings(row: dict) -> dict:
    """DeepSpeed-Chat's schema (as Dahoas/rm-static)."""
    return {"prompt": f"\n\nHuman: {row['question']}\n\nAssistant:", "chosen": f" {row['answer']}",
            "rejected": " I don't know."}


def as_messages(row: dict) -> dict:
    return {"messages": [{"role": "user", "content": row["question"]},
                         {"role": "assistant", "content": row["answer"]}]}


def write_task(out: str | Path, n_train: int = 160, n_eval: int = 100, seed: int = 1234,
               n_perplexity: int = 16) -> dict:
    """Write ``out/strings`` and ``out/messages`` (``train.json``, ``eval.json``: json lines). The
    ``eval.json`` files hold the first ``n_perplexity`` held-out rows only: training's own perplexity
    evaluation reads them (cheap); the exact-match score uses all ``n_eval`` (returned as ``eval``)."""
    out = Path(out)
    train, evalset = split_rows(n_train, n_eval, seed)
    paths = {}
    for kind, convert in (("strings", as_strings), ("messages", as_messages)):
        (out / kind).mkdir(parents=True, exist_ok=True)
        for name, rows in (("train", train), ("eval", evalset[:n_perplexity])):
            (out / kind / f"{name}.json").write_text("".join(json.dumps(convert(r)) + "\n" for r in rows))
        paths[kind] = out / kind
    return {"train": train, "eval": evalset, **paths}


def chat_pipeline(folder):
    """A transformers ``text-generation`` pipeline on a model folder, padded on the left for batches."""
    import torch
    from transformers import AutoTokenizer, pipeline

    tokenizer = AutoTokenizer.from_pretrained(str(folder), padding_side="left")
    return pipeline("text-generation", model=str(folder), tokenizer=tokenizer, dtype=torch.float32)


def chat_answers(pipe, questions: list[str], max_new_tokens: int = 12, batch_size: int = 50) -> list[str]:
    """Greedy replies of a chat pipeline, one user turn each (the model's own chat template)."""
    chats = [[{"role": "user", "content": q}] for q in questions]
    outs = pipe(chats, max_new_tokens=max_new_tokens, do_sample=False, batch_size=batch_size,
                return_full_text=False)
    return [o[0]["generated_text"].strip() for o in outs]


def score(rows: list[dict], answers: list[str]) -> tuple[float, list[dict]]:
    """Exact match of each answer with the expected json text."""
    results = [{"question": r["question"], "expected": r["answer"], "got": a, "correct": a == r["answer"]}
               for r, a in zip(rows, answers)]
    return sum(r["correct"] for r in results) / max(len(results), 1), results
