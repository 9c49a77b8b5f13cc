"""Contrastive search and diverse (group) beam search, written out for the tiny models.

DeepSpeed-Chat's ``prompt_eval.py`` lists these two strategies (commented out). transformers 5 moved
both out of the library into hub repositories that ``generate`` downloads at run time, which an
offline machine cannot do, so sftlib implements them here: short, one prompt at a time, and without
a key/value cache (every step re-runs the whole sequence), which is fine for tiny models and short
answers, and slow for big ones.

Explained in notebooks/05_main_training_loop.ipynb.
"""

from __future__ import annotations

from collections import Counter

import torch
import torch.nn.functional as F


@torch.no_grad()
def contrastive_search(model, input_ids: torch.Tensor, top_k: int = 4, penalty_alpha: float = 0.6,
                       max_new_tokens: int = 100, eos_token_id: int | None = None) -> torch.Tensor:
    """Su et al. (2022): among the ``top_k`` likeliest tokens, pick the one maximising
    ``(1 - alpha) * p(v) - alpha * max_j cos(h_v, h_j)`` (confidence minus degeneration)."""
    ids = input_ids[:1]
    out = model(ids, output_hidden_states=True)
    context, logits = out.hidden_states[-1][0], out.logits[0, -1]
    for _ in range(max_new_tokens):
        probs, tokens = F.softmax(logits.float(), dim=-1).topk(top_k)
        candidates = torch.cat([ids.repeat(top_k, 1), tokens[:, None]], dim=1)
        out = model(candidates, output_hidden_states=True)
        hidden = out.hidden_states[-1]  # (k, T + 1, H)
        similarity = F.cosine_similarity(hidden[:, -1:, :], context[None], dim=-1).max(dim=-1).values
        best = int(torch.argmax((1 - penalty_alpha) * probs - penalty_alpha * similarity))
        ids, context, logits = candidates[best:best + 1], hidden[best], out.logits[best, -1]
        if eos_token_id is not None and int(tokens[best]) == eos_token_id:
            break
    return ids


@torch.no_grad()
def diverse_beam_search(model, input_ids: torch.Tensor, num_beams: int = 4, num_beam_groups: int = 2,
                        diversity_penalty: float = 1.0, max_new_tokens: int = 100,
                        eos_token_id: int | None = None, num_return_sequences: int = 1) -> list[torch.Tensor]:
    """Vijayakumar et al. (2016): beams split into groups; at each step a group's log-probabilities
    are lowered by ``diversity_penalty`` times how often earlier groups just chose each token.
    Returns the best ``num_return_sequences`` sequences by length-normalised score."""
    per_group = max(num_beams // num_beam_groups, 1)
    groups = [[(input_ids[0], 0.0)] for _ in range(num_beam_groups)]
    finished: list[tuple[torch.Tensor, float]] = []
    prompt_len = input_ids.shape[1]
    for _ in range(max_new_tokens):
        chosen = Counter()
        for g, beams in enumerate(groups):
            if not beams:
                continue
            logp = F.log_softmax(model(torch.stack([b[0] for b in beams])).logits[:, -1].float(), dim=-1)
            for token, count in chosen.items():
                logp[:, token] -= diversity_penalty * count
            scores = torch.tensor([b[1] for b in beams], device=logp.device)[:, None] + logp
            top = scores.view(-1).topk(min(per_group * 2, scores.numel()))
            keep = []
            for value, flat in zip(top.values.tolist(), top.indices.tolist()):
                beam, token = divmod(flat, logp.shape[1])
                seq = torch.cat([beams[beam][0], torch.tensor([token], device=input_ids.device)])
                if eos_token_id is not None and token == eos_token_id:
                    finished.append((seq, value / (len(seq) - prompt_len)))
                else:
                    keep.append((seq, value))
                chosen[token] += 1
                if len(keep) == per_group:
                    break
            groups[g] = keep
        if all(not beams for beams in groups):
            break
    finished += [(seq, score / max(len(seq) - prompt_len, 1)) for beams in groups for seq, score in beams]
    finished.sort(key=lambda item: item[1], reverse=True)
    return [seq for seq, _ in finished[:num_return_sequences]]
