"""sftlib.lessons.atomic_save: a save SIGKILLed mid-write leaves the previous save, or nothing."""

import json
import os
import signal

from sftlib import zero
from sftlib.lessons import atomic_save
from sftlib.lessons.whole_weights import compare_state_dicts


def test_sigkill_mid_save_leaves_previous_save_or_nothing(world, tmp_path):
    from safetensors.torch import load_file

    prev, fresh = tmp_path / "prev", tmp_path / "fresh"
    atomic_save.resave(world["opt"], prev)
    before = load_file(prev / "model.safetensors")
    savers = [atomic_save.start_paused_save(world["opt"], prev), atomic_save.start_paused_save(world["opt"], fresh)]

    killed = atomic_save.kill_when_paused(savers[0], prev)
    assert killed["returncode"] == -signal.SIGKILL
    assert len(killed["temp"]) == 1 and "model.safetensors" in killed["temp_files"], "killed with weights written"
    after = load_file(prev / "model.safetensors")
    assert compare_state_dicts(before, after) == 0.0, "the previous save is intact"
    assert json.loads((prev / "sftlib_save.json").read_text())["tensors"] == len(before)

    assert atomic_save.kill_when_paused(savers[1], fresh)["returncode"] == -signal.SIGKILL
    assert not fresh.exists(), "no half folder where nothing was saved before"
    stale = os.path.basename(killed["temp"][0])
    assert zero.remove_stale_temporaries(prev) == [stale] and not os.path.exists(killed["temp"][0])
