"""sftlib.history: the typed record main() returns, saves and resumes from."""

import json

from sftlib.history import History, Reporter


def test_history_round_trips_through_json_and_reads_like_it():
    h = History(world_size=2, train_samples=10, eval_samples=4)
    rep = Reporter(h, rank=0)
    lines = []
    rep.step(1, 0.5, 1e-3, 1234.0, "9.0 samples/s | 0.01 TFLOPs", write=lines.append)
    rep.evaluation(1, 1, 3.0, 1.1, 2.9)
    assert lines == ["step 1 | loss 0.5000 | 1.2k tok/s | 9.0 samples/s | 0.01 TFLOPs | lr 1.0e-03"]
    saved = json.loads(json.dumps(h.to_dict()))
    assert saved["loss"] == h["loss"] == h.loss == [0.5]
    assert History.from_dict({**saved, "unknown_key_from_a_newer_version": 1}) == h


def test_reporter_writes_tensorboard_on_rank_0_only(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for rank in (0, 1):
        rep = Reporter(History(), rank, str(tmp_path / f"tb{rank}"))
        rep.step(1, 0.5, 1e-3, 10.0, "", write=print)
        rep.evaluation(0, 1, 3.0, 1.1, 2.9)
        rep.close()
    events = EventAccumulator(str(tmp_path / "tb0" / "sftlib")).Reload()
    assert {"train/loss", "train/lr", "eval/ppl"} <= set(events.Tags()["scalars"])
    assert not (tmp_path / "tb1").exists()
    assert capsys.readouterr().out.count("step 1 | loss") == 1
