"""prompt_eval: every decoding strategy runs, the printed layout matches the original, scores are exact."""

import sys

import pytest

from sftlib import prompt_eval
from sftlib.prompt_eval import STRATEGIES, generate, generation_kwargs


@pytest.fixture(scope="module")
def tiny(world):
    return prompt_eval.load_model(str(world["opt"]))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_generates(tiny, strategy):
    import torch

    model, tok = tiny
    torch.manual_seed(0)
    kwargs = generation_kwargs(strategy, num_beams=4, num_beam_groups=2, num_return_sequences=2)
    out = generate(model, tok, ["\n\nHuman: What is the opposite of hot?\n\nAssistant:"], max_new_tokens=6, **kwargs)
    assert out and all(isinstance(t, str) for t in out)
    if strategy in ("beam", "diverse_beam", "multinomial"):
        assert len(out) == 2


def test_diverse_beams_differ(tiny):
    model, tok = tiny
    kwargs = generation_kwargs("diverse_beam", num_beams=4, num_beam_groups=2, num_return_sequences=4)
    out = generate(model, tok, ["The capital of"], max_new_tokens=4, **kwargs)
    assert len(set(out)) == len(out) == 4


def test_contrastive_with_alpha_zero_is_greedy(tiny):
    model, tok = tiny
    prompt = ["\n\nHuman: Tell me the color of snow.\n\nAssistant:"]
    greedy = generate(model, tok, prompt, max_new_tokens=8, strategy="greedy", do_sample=False)
    contrastive = generate(model, tok, prompt, max_new_tokens=8, strategy="contrastive", top_k=4, penalty_alpha=0.0)
    assert greedy == contrastive


def test_greedy_is_greedy_where_the_generation_config_samples(world):
    import torch

    model, tok = prompt_eval.load_model(str(world["opt"]))
    prompt = ["\n\nHuman: What is the opposite of hot?\n\nAssistant:"]
    expected = generate(model, tok, prompt, max_new_tokens=8)
    model.generation_config.do_sample, model.generation_config.top_k = True, 0
    sampled = set()
    for seed in range(3):
        torch.manual_seed(seed)
        assert generate(model, tok, prompt, max_new_tokens=8) == expected
        sampled.add(generate(model, tok, prompt, max_new_tokens=8, strategy="multinomial")[0])
    assert sampled != {expected[0]}, "the config does sample when asked to"


def test_exact_match_scores_what_it_says(tiny):
    model, tok = tiny
    prompt = "\n\nHuman: What is the opposite of hot?\n\nAssistant:"
    got = generate(model, tok, [prompt], max_new_tokens=24, do_sample=False)[0]
    rows = [{"prompt": prompt, "chosen": " " + prompt_eval.normalise(got)}, {"prompt": prompt, "chosen": " ???"}]
    score, results = prompt_eval.exact_match(model, tok, rows)
    assert score == 0.5 and [r["correct"] for r in results] == [True, False]


def test_printed_layout(world, capsys):
    prompt_eval.main(["--model_name_or_path_baseline", str(world["opt"]), "--model_name_or_path_finetune",
                      str(world["opt"]), "--max_new_tokens", "4", "--language", "Chinese"])
    out = capsys.readouterr().out
    assert out.count("==========Baseline: Greedy=========") == len(prompt_eval.PROMPTS["Chinese"])
    assert out.count("==========finetune: Greedy=========") == len(prompt_eval.PROMPTS["Chinese"])
    assert "====================prompt end=============================" in out



def test_own_prompts_replace_the_languages(world, capsys):
    prompts = ["\n\nHuman: What is the opposite of hot?\n\nAssistant:", "\n\nHuman: What is 5 plus one?\n\nAssistant:"]
    prompt_eval.main(["--model_name_or_path_baseline", str(world["opt"]), "--model_name_or_path_finetune",
                      str(world["opt"]), "--max_new_tokens", "3", *[a for q in prompts for a in ("--prompt", q)]])
    out = capsys.readouterr().out
    assert out.count("==========Baseline: Greedy=========") == 2 and out.count("prompt end") == 2
    assert "opposite of hot?" in out and "5 plus one?" in out and "Microsoft" not in out

def test_picks_the_accelerator_in_the_dtype_asked_for(world, monkeypatch):
    """Mocked CUDA, a launched rank: main loads both models on cuda:LOCAL_RANK in bf16 (nothing is loaded for real)."""
    import torch

    import sftlib.dist

    loaded = []

    def fake_load(path, device="cpu", dtype=torch.float32):
        loaded.append((path, device, dtype))
        raise RuntimeError("stop before loading")

    monkeypatch.setattr(sftlib.dist, "accelerator_name", lambda: "cuda")
    monkeypatch.setenv("RANK", "3")  # a launched rank (sftlib.dist.launched), the second of its node
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(prompt_eval, "load_model", fake_load)
    with pytest.raises(RuntimeError, match="stop before loading"):
        prompt_eval.main(["--model_name_or_path_baseline", str(world["opt"]), "--model_name_or_path_finetune",
                          str(world["opt"]), "--dtype", "bf16"])
    assert loaded == [(str(world["opt"]), torch.device("cuda", 1), torch.bfloat16)]
    monkeypatch.setattr(sftlib.dist, "accelerator_name", lambda: "cpu")
    assert prompt_eval.device_and_dtype("fp32") == (torch.device("cpu"), torch.float32)
    with pytest.raises(prompt_eval.SFTError, match="--dtype fp16 on a CPU"):
        prompt_eval.device_and_dtype("fp16")


def test_load_model_puts_the_model_where_asked(world):
    import torch

    model, _ = prompt_eval.load_model(str(world["opt"]), "cpu", torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16} and model.device == torch.device("cpu")


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v"]))
