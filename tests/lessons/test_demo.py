"""The demo's helpers: the command line it trains with, the cut-down log a page shows, the split perplexity."""

import math

from sftlib.lessons import demo


def test_demo_command_line_is_the_documented_one(tmp_path):
    args = demo.demo_train_args({"opt": "toy_world/opt-tiny", "data": "toy_world/data"}, tmp_path)
    assert args[:8] == ["--model_name_or_path", "toy_world/opt-tiny", "--data_path", "toy_world/data",
                        "--data_output_path", str(tmp_path / "data_files"), "--output_dir", str(tmp_path / "model")]
    flags = dict(zip(args[8::2], args[9::2]))
    assert flags["--num_train_epochs"] == "8" and flags["--seed"] == "1234" and args[-1] == "--seeded_sampler"


def test_train_for_page_prints_every_nth_step_the_evaluations_and_the_save(monkeypatch, capsys):
    from sftlib import train

    def fake_main(argv):
        print("***** Running training *****")
        print("ppl: 100.0, loss: 4.6")
        print("token-weighted ppl: 99.0")
        for step in range(1, 49):
            print(f"step {step} | loss 1.0000 | 1.0k tok/s | lr 1.0e-03")
        print("ppl: 2.0, loss: 0.7")
        print("saved to out/model")
        return {"argv": argv}

    monkeypatch.setattr(train, "main", fake_main)
    assert demo.train_for_page(["--x"], every=24) == {"argv": ["--x"]}
    shown = capsys.readouterr().out.splitlines()
    assert shown == ["ppl: 100.0, loss: 4.6", "step 24 | loss 1.0000 | 1.0k tok/s | lr 1.0e-03",
                     "step 48 | loss 1.0000 | 1.0k tok/s | lr 1.0e-03", "ppl: 2.0, loss: 0.7", "saved to out/model"]


def test_perplexity_split_counts_every_token_once(world):
    from sftlib.lessons import toy
    from sftlib.prompt_eval import load_model

    model, tokenizer = load_model(str(world["opt"]))
    rows = toy.load_rows(world["eval"])[:8]
    split = demo.perplexity_split(model, tokenizer, rows)
    total = sum(len(tokenizer(r["prompt"] + r["chosen"] + tokenizer.eos_token).input_ids) - 1 for r in rows)
    assert split["prompt_tokens"] + split["answer_tokens"] == total
    assert split["answer_tokens"] == sum(len(tokenizer(r["chosen"] + tokenizer.eos_token,
                                                       add_special_tokens=False).input_ids) for r in rows)
    assert all(math.isfinite(split[k]) and split[k] > 1 for k in ("prompt", "answer"))
