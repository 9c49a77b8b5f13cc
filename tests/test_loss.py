"""sftlib.loss: the loss from logits equals the model's own, and token weighting makes a split batch
give the gradient of the whole batch, where the mean of micro-batch means does not."""

import types

import pytest
import torch

from sftlib import collate, loss
from sftlib.constants import IGNORE_INDEX
from sftlib.errors import SFTError


@pytest.fixture(scope="module")
def opt(world):
    """The toy OPT (eval mode: dropout off) and a dynamically padded batch of 6 samples whose label
    token counts differ (prompts masked on half of them)."""
    from transformers import AutoModelForCausalLM

    from sftlib.lessons.toy import load_rows
    from sftlib.model import load_hf_tokenizer

    tok = load_hf_tokenizer(str(world["opt"]))
    model = AutoModelForCausalLM.from_pretrained(str(world["opt"])).eval()
    samples = []
    for i, row in enumerate(load_rows(world["train"])[:6]):
        ids = torch.tensor(tok(row["prompt"] + row["chosen"] + tok.eos_token).input_ids)
        labels = ids.clone()
        if i % 2:
            labels[: len(tok(row["prompt"]).input_ids)] = IGNORE_INDEX  # answer-only rows: far fewer label tokens
        samples.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    batch = collate.DynamicPaddingCollator(tok.pad_token_id)(samples)
    return model, batch


def test_label_token_count_skips_the_first_position_and_ignored_labels():
    labels = torch.tensor([[5, 6, IGNORE_INDEX, 7], [IGNORE_INDEX, IGNORE_INDEX, 8, IGNORE_INDEX]])
    assert int(loss.label_token_count(labels)) == 2 + 1  # row 0: 6 and 7 (5 is never predicted); row 1: 8


def test_summed_loss_over_the_count_is_the_models_own_loss(opt):
    model, batch = opt
    with torch.no_grad():
        out = model(**batch)
    own = out.loss
    ours = loss.summed_token_loss(out.logits, batch["labels"]) / loss.label_token_count(batch["labels"])
    assert ours.dtype == torch.float32
    assert float(ours) == pytest.approx(float(own), rel=1e-6)


def test_a_batch_without_label_tokens_gives_zero_loss_and_zero_gradient():
    logits = torch.randn(2, 5, 11, requires_grad=True)
    labels = torch.full((2, 5), IGNORE_INDEX)
    value = loss.token_weighted_loss(logits, labels, window_tokens=0, divisor=4)
    value.backward()
    assert float(value.detach()) == 0.0 and torch.count_nonzero(logits.grad) == 0


def _grads(model, batch, micro_loss, pieces) -> torch.Tensor:
    """Gradient accumulated over ``pieces`` (lists of row indices) with ``micro_loss(out, labels)``,
    each micro loss divided by the number of pieces, as ``engine.backward`` divides by GAS."""
    model.zero_grad()
    for piece in pieces:
        part = {k: v[piece] for k, v in batch.items()}
        (micro_loss(model(**part), part["labels"]) / len(pieces)).backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def test_token_weighting_makes_accumulation_equal_to_one_batch_and_mean_does_not(opt):
    model, batch = opt
    whole, split = [list(range(6))], [[0, 1], [2, 3], [4, 5]]  # micro 6 vs micro 2 x GAS 3
    window = int(loss.label_token_count(batch["labels"]))
    counts = [int(loss.label_token_count(batch["labels"][p])) for p in split]
    assert len(set(counts)) > 1, "the micro batches must hold different numbers of label tokens"

    def token(gas):
        return lambda out, labels: loss.token_weighted_loss(out.logits, labels, window, divisor=gas)

    def mean(out, labels):
        return out.loss

    reference = _grads(model, batch, token(1), whole)
    by_token, by_mean = _grads(model, batch, token(3), split), _grads(model, batch, mean, split)
    assert torch.allclose(_grads(model, batch, mean, whole), reference, atol=1e-7)  # one micro batch: both agree
    token_error = float((by_token - reference).abs().max())
    mean_error = float((by_mean - reference).abs().max())
    assert token_error < 1e-5 * float(reference.abs().max())
    assert mean_error > 100 * token_error  # the mean of means weighs each micro batch, not each token
    print(f"max |grad - one batch|: token {token_error:.1e}, mean {mean_error:.1e}")


def test_window_count_without_a_process_group_is_this_ranks_count():
    batches = [{"labels": torch.tensor([[1, 2, 3]])}, {"labels": torch.tensor([[1, IGNORE_INDEX, 3, 4]])}]
    count = loss.window_token_count(batches, torch.device("cpu"))
    assert count.dtype == torch.int64 and int(count) == 2 + 2


def test_every_micro_batch_carries_the_count_of_its_optimizer_step():
    engine = types.SimpleNamespace(gradient_accumulation_steps=lambda: 2, micro_steps=0)
    batches = [{"labels": torch.tensor([[0] + [1] * n]), "i": i} for i, n in enumerate([1, 2, 3, 4, 5])]
    seen = [(b["i"], int(b[loss.WINDOW_TOKENS])) for b in loss.with_window_counts(batches, engine, torch.device("cpu"))]
    assert seen == [(0, 3), (1, 3), (2, 7), (3, 7), (4, 5)]  # the last step is partial: its own tokens


def test_the_divisor_is_accumulation_steps_times_data_parallel_ranks():
    engine = types.SimpleNamespace(gradient_accumulation_steps=lambda: 4, dp_world_size=2)
    assert loss.deepspeed_divisor(engine) == 8


def test_token_refuses_a_step_across_two_epochs_and_names_a_divisor():
    args = types.SimpleNamespace(loss_reduction="token", gradient_accumulation_steps=4, num_train_epochs=2)
    with pytest.raises(SFTError, match=r"--gradient_accumulation_steps 3 \(it divides 9\)"):
        loss.check_windows(args, 9)
    loss.check_windows(args, 8)  # 8 micro batches: two whole steps per epoch
    loss.check_windows(types.SimpleNamespace(**{**vars(args), "num_train_epochs": 1}), 9)  # one epoch: no span
    loss.check_windows(types.SimpleNamespace(**{**vars(args), "loss_reduction": "mean"}), 9)  # mean: as ever
