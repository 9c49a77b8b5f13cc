"""Token-by-token label view: what each position of a training row is, and whether it carries loss.

A row comes from the real pipeline: a phase-1 ``PromptDataset`` (or a ``PackedDataset`` built on
one) from ``sftlib.data.create_prompt_dataset``, batched by the collator training uses
(``sftlib.collate.make_collator``). Each token is classified from what the dataset stored, never
from the labels:

- ``pad``: a position outside every sample (attention mask 0, or past a packed row's samples);
- ``bos``: the tokenizer's BOS token opening a sample (OPT's is ``</s>``, the same id as EOS and pad);
- ``eos``: the EOS token closing a sample or a chat turn (the end-of-conversation token);
- ``prompt`` / ``response``: before / from the first response token (``prompt_tokens``), or for
  ``messages`` rows outside / inside an assistant turn (the stored ``label_mask``).

Then the labels say which tokens carry loss: ``labels != -100``, except a row's first position,
which the model's shifted loss never predicts (transformers drops ``labels[..., 0]``). The result
renders as a coloured strip (HTML, ``_repr_html_``) or as plain text (``LabelView.text()``); its
``repr`` is one line, so a notebook cell shows the strip and a one-line summary.

Explained in notebooks/01_dataset_abstraction.ipynb.
"""

from __future__ import annotations

import dataclasses
import html
from collections import Counter

import torch

from sftlib.constants import IGNORE_INDEX

KINDS = ("bos", "prompt", "response", "eos", "pad")
COLOURS = {"bos": "#e4d7f5", "prompt": "#d6e6fa", "response": "#d5f0d5", "eos": "#ffd9a8", "pad": "#e6e6e6"}
LETTERS = {"bos": "B", "prompt": "P", "response": "R", "eos": "E", "pad": "_"}


@dataclasses.dataclass(frozen=True)
class Token:
    """One position of a row."""

    index: int          # position in the row
    token_id: int
    text: str           # the token decoded on its own
    kind: str           # one of KINDS
    part: str           # "prompt", "response" or "pad": the side of the prompt/response boundary it lies on
    label: int          # the label the collated batch holds (-100: ignored)
    loss: bool          # a target of the loss: label != -100 and not the row's first position
    sample: int         # which sample of the row it belongs to (-1 for padding)
    position: int       # its position id (restarting per sample when packed)


@dataclasses.dataclass
class LabelView:
    """The tokens of one collated row; ``_repr_html_`` draws the strip, ``text()`` the terminal version."""

    title: str
    tokens: list[Token]

    def count(self, kind: str | None = None, loss: bool | None = None, part: str | None = None) -> int:
        """How many tokens match every condition given."""
        return sum(1 for t in self.tokens if (kind is None or t.kind == kind) and (loss is None or t.loss == loss)
                   and (part is None or t.part == part))

    def counts(self) -> dict:
        """{kind: (tokens, of which with loss)} for the kinds present."""
        total = Counter(t.kind for t in self.tokens)
        trained = Counter(t.kind for t in self.tokens if t.loss)
        return {k: (total[k], trained[k]) for k in KINDS if total[k]}

    @property
    def samples(self) -> int:
        return len({t.sample for t in self.tokens if t.sample >= 0})

    def summary(self) -> str:
        parts = ", ".join(f"{k} {n} ({m} with loss)" for k, (n, m) in self.counts().items())
        return f"{self.title}: {len(self.tokens)} positions, {self.samples} sample(s); {parts}"

    def __repr__(self) -> str:
        return self.summary()

    def _repr_html_(self) -> str:
        return render_html(self)

    def text(self, width: int = 100) -> str:
        """Plain-text strip: aligned columns of token / kind letter / loss mark (``^``) [/ position]."""
        return render_text(self, width)


def _show(text: str) -> str:
    return text.replace("\n", "\u21b5").replace("\t", "\u21e5") or "\u2205"


def render_html(view: LabelView) -> str:
    """A compact coloured strip: background = kind, a dark underline = carries loss, faded = no loss."""
    packed = len({t.sample for t in view.tokens if t.sample >= 0}) > 1
    legend = " ".join(f'<span style="background:{COLOURS[k]};padding:0 4px">{k}</span>' for k in KINDS)
    cells = []
    for t in view.tokens:
        start = packed and t.position == 0 and t.sample >= 0
        style = (f"background:{COLOURS[t.kind]};color:#000;white-space:pre;display:inline-block;margin:1px 1px 1px 0;"
                 f"padding:0 1px;border-bottom:3px solid {'#b00' if t.loss else 'transparent'};"
                 f"{'opacity:.55;' if not t.loss else ''}{'border-left:2px solid #333;' if start else ''}")
        tip = f"#{t.index} id {t.token_id} {t.kind} label {t.label} pos {t.position}"
        pos = f'<sub style="font-size:60%">{t.position}</sub>' if packed else ""
        cells.append(f'<span title="{tip}" style="{style}">{html.escape(_show(t.text))}{pos}</span>')
    return (f'<div style="font:12px/1.9 monospace"><b>{html.escape(view.title)}</b> &nbsp;{legend} &nbsp;'
            f'<span style="border-bottom:3px solid #b00">underlined</span> = carries loss'
            f'{" &nbsp;| = a sample starts, small numbers = position ids" if packed else ""}<br>'
            + "".join(cells) + "</div>")


def render_text(view: LabelView, width: int = 100) -> str:
    """Terminal version of the strip (spaces shown as the open-box sign)."""
    packed = len({t.sample for t in view.tokens if t.sample >= 0}) > 1
    cols = []
    for t in view.tokens:
        cell = [_show(t.text).replace(" ", "\u2423"), LETTERS[t.kind], "^" if t.loss else ""]
        if packed:
            cell.append(str(t.position))
        w = max(len(c) for c in cell)
        cols.append([c.ljust(w) for c in cell])
    heads = ["token", "kind", "loss"] + (["pos"] if packed else [])
    lines, chunk, used = [view.title + "   (B bos, P prompt, R response, E eos, _ pad; ^ carries loss)"], [], 0
    for col in cols + [None]:
        if col is None or (chunk and used + len(col[0]) + 1 > width):
            for r, head in enumerate(heads):
                lines.append(f"{head:<6}" + " ".join(c[r] for c in chunk).rstrip())
            chunk, used = [], 0
        if col is not None:
            chunk.append(col)
            used += len(col[0]) + 1
    return "\n".join(lines)


def _segment_kinds(ids: list[int], row_info: dict, tokenizer) -> list[tuple[str, str]]:
    """(kind, part) of each token of one sample, from its stored prompt length or label mask."""
    mask = row_info.get("label_mask")
    n_prompt = row_info.get("prompt_tokens", 0)
    out = []
    for i, tok in enumerate(ids):
        part = ("response" if mask[i] else "prompt") if mask is not None else (
            "response" if i >= n_prompt else "prompt")
        if i == 0 and tokenizer.bos_token_id is not None and tok == tokenizer.bos_token_id and part == "prompt":
            kind = "bos"
        elif tok == tokenizer.eos_token_id and (i > 0 or part == "response"):
            kind = "eos"
        else:
            kind = part
        out.append((kind, part))
    return out


def classify(input_ids, labels, segments: list[tuple[int, int, dict]], tokenizer, position_ids=None,
             title: str = "") -> LabelView:
    """The view of one row: ``segments`` are (start, length, stored row) of each sample in it; every
    other position is padding. ``labels`` only decide ``loss``, never the kind."""
    ids = [int(x) for x in input_ids]
    labs = [int(x) for x in labels]
    pos = [int(x) for x in position_ids] if position_ids is not None else list(range(len(ids)))
    kinds = [("pad", "pad", -1)] * len(ids)
    for s, (start, length, row_info) in enumerate(segments):
        for j, (kind, part) in enumerate(_segment_kinds(ids[start:start + length], row_info, tokenizer)):
            kinds[start + j] = (kind, part, s)
    tokens = [Token(i, t, tokenizer.decode([t]), k, p, lab, lab != IGNORE_INDEX and i > 0, s, pos[i])
              for i, (t, lab, (k, p, s)) in enumerate(zip(ids, labs, kinds))]
    return LabelView(title, tokens)


def _stored(table, index: int) -> dict:
    row = table[int(index)]
    return {"prompt_tokens": row.get("prompt_tokens", 0), "label_mask": row.get("label_mask"),
            "length": len(row["input_ids"])}


def view_row(dataset, index: int, tokenizer, collator=None, title: str | None = None) -> LabelView:
    """Collate sample (or packed row) ``index`` of ``dataset`` as training does and classify its tokens.

    ``dataset``: a phase-1 ``PromptDataset`` (padded to ``max_seq_len`` -> transformers' default
    collator; unpadded -> the dynamic-padding collator) or a ``collate.PackedDataset`` (-> the
    packing collator, ``mask`` layout). ``collator`` overrides the choice."""
    from sftlib import collate

    if isinstance(dataset, collate.PackedDataset):
        collator = collator or collate.make_collator("packing", tokenizer.pad_token_id, packing="mask")
        batch = collator([dataset[index]])
        segments, start = [], 0
        for j in dataset.bins[index]:
            info = _stored(dataset.dataset.table, j)
            segments.append((start, info["length"], info))
            start += info["length"]
        title = title or f"packed row {index}"
    else:
        kind = "compat" if dataset.pad_to_max_len else "dynamic"
        collator = collator or collate.make_collator(kind, tokenizer.pad_token_id, dataset.max_seq_len)
        batch = collator([dataset[index]])
        info = _stored(dataset.table, index)
        segments = [(0, min(info["length"], dataset.max_seq_len), info)]
        title = title or f"sample {index}"
    batch.pop("num_tokens", None)
    positions = batch.get("position_ids")
    return classify(batch["input_ids"][0], batch["labels"][0], segments, tokenizer,
                    None if positions is None else positions[0], title)


def loss_matches_labels(view: LabelView, labels: torch.Tensor) -> bool:
    """The view's loss marks are exactly ``labels != -100`` past the row's first position."""
    expected = (torch.as_tensor(labels) != IGNORE_INDEX).tolist()
    return all(t.loss == (expected[t.index] and t.index > 0) for t in view.tokens)
