"""The toy world's chat data: a multi-turn family in ``messages`` form and a chat template for the
toy tokenizer.

Each conversation asks one of the toy facts, then a follow-up that only the first turn makes
answerable ("And after that?", "And which country has that capital?", "And the opposite of that?");
every other conversation opens with a system turn. The rows are written to ``toy_world/chat/``
(``train.json``, ``eval.json``: json lines, ``{"messages": [...], "family": ...}``) with the template
beside them (``chat_template.jinja``), built by ``toy.ensure_toy_world(chat=True)``, apart from
``toy_world/data`` so that the instruction set, the toy models and their scores stay as they are.

The template marks the assistant turns with ``{% generation %}``, so transformers' own
``return_assistant_tokens_mask`` is there to check ``sftlib.data.messages`` against; it uses the
toy tokenizer's EOS (``</s>``) as the end-of-turn token.
"""

from __future__ import annotations

import json
import random
import tempfile
from pathlib import Path

CHAT_VERSION = 1  # bump when anything below changes what gets built
SYSTEM = "You are a terse assistant. Answer in one word."
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|' + message['role'] + '|>\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{% generation %}{{- message['content'] + eos_token }}{% endgeneration %}"
    "{%- else %}{{- message['content'] + eos_token }}{%- endif %}"
    "{{- '\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|assistant|>\n' }}{%- endif %}"
)


def make_chats(seed: int) -> list[dict]:
    """Two-question conversations whose second answer needs the first turn."""
    from sftlib.lessons.toy import make_facts

    items, _ = make_facts(seed)
    convs = []
    for it in items:
        q, a = it.question, it.answer
        if q.startswith("What is the capital of "):
            follow, second = "And which country has that capital?", q[len("What is the capital of "):-1] + "."
        elif q.startswith("What number comes after "):
            follow, second = "And after that?", f"{int(a[:-1]) + 1}."
        elif q.startswith("What is the opposite of "):
            follow, second = "And the opposite of that?", q[len("What is the opposite of "):-1] + "."
        else:
            continue
        convs.append({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a},
                                   {"role": "user", "content": follow}, {"role": "assistant", "content": second}],
                      "family": f"{it.family}_followup"})
    rng = random.Random(seed + 3)
    rng.shuffle(convs)
    for i, c in enumerate(convs):
        if i % 2:
            c["messages"] = [{"role": "system", "content": SYSTEM}] + c["messages"]
    return convs


def chat_split(seed: int, eval_fraction: float) -> tuple[list[dict], list[dict]]:
    """Train and eval conversations; train is a multiple of 16 rows (even over 1, 2, 4 or 8 ranks)."""
    convs = make_chats(seed)
    n_train = (len(convs) - int(len(convs) * eval_fraction)) // 16 * 16
    return convs[:n_train], convs[n_train:]


def build_chat(root: Path, seed: int, eval_fraction: float, publish) -> None:
    """Write ``root/chat`` atomically (``publish`` stamps and renames the temporary folder)."""
    train, evalset = chat_split(seed, eval_fraction)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".chat-"))
    for name, rows in (("train", train), ("eval", evalset)):
        with open(tmp / f"{name}.json", "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    (tmp / "chat_template.jinja").write_text(CHAT_TEMPLATE, encoding="utf-8")
    publish(tmp, root / "chat", {"chat_version": CHAT_VERSION, "train_rows": len(train), "eval_rows": len(evalset)})


def chat_ok(folder: Path) -> bool:
    try:
        return json.loads((folder / "toy_world.json").read_text())["chat_version"] == CHAT_VERSION
    except (OSError, ValueError, KeyError):
        return False
