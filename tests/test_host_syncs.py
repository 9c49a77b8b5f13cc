"""No micro step of the training loop waits for the device; an optimizer step waits once.

On a GPU, reading a device tensor back (``.item()``, ``int(t)``, ``.tolist()``, ``bool(t)``...) makes
the host wait for every kernel queued before it: with small models the GPU then idles between
micro batches. Here the batches a micro step moves to "the device" become ``OnDevice`` tensors, a CPU
tensor subclass that records every such read and where it came from (everything computed from them,
the loss included, is ``OnDevice`` too). sftlib's own code must read none per micro step, and one
(the log line's all-reduced stats) per optimizer step."""

import sys
import traceback
from pathlib import Path

import pytest
import torch

import sftlib
from sftlib import train, utils

SFTLIB = str(Path(sftlib.__file__).parent)
READS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__int__, torch.Tensor.__float__,
         torch.Tensor.__bool__, torch.Tensor.__index__, torch.Tensor.numpy, torch.Tensor.cpu,
         torch.Tensor.nonzero, torch.nonzero, torch.Tensor.__format__, torch.Tensor.__repr__}


class OnDevice(torch.Tensor):
    """A tensor that stands for one on an accelerator: reads back to the host are recorded as
    (method, file:line of the caller) when the caller is sftlib's code."""

    reads: list = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        to_cpu = func is torch.Tensor.to and any(str(a) == "cpu" for a in [*args[1:], *(kwargs or {}).values()])
        if func in READS or to_cpu:
            caller = traceback.extract_stack(sys._getframe(1), limit=1)[0]
            if caller.filename.startswith(SFTLIB):
                cls.reads.append((func.__name__, f"{Path(caller.filename).name}:{caller.lineno}"))
        return super().__torch_function__(func, types, args, kwargs or {})


def on_device(batch, device, non_blocking=False):
    return {k: v.as_subclass(OnDevice) if torch.is_tensor(v) else v for k, v in batch.items()}


@pytest.mark.parametrize("batching", [[], ["--packing"]], ids=["compat", "packing"])
def test_micro_steps_never_read_the_device_and_each_optimizer_step_reads_once(world, tmp_path, monkeypatch,
                                                                              batching):
    phases = []

    def recorded(name, step):
        def wrapped(*args, **kwargs):
            start = len(OnDevice.reads)
            out = step(*args, **kwargs)
            phases.append((name, OnDevice.reads[start:]))
            return out
        return wrapped

    OnDevice.reads = []
    monkeypatch.setattr(utils, "to_device", on_device)
    monkeypatch.setattr(train, "micro_step", recorded("micro", train.micro_step))
    monkeypatch.setattr(train, "finish_step", recorded("finish", train.finish_step))
    history = train.main(["--model_name_or_path", str(world["opt"]), "--data_path", str(world["data"]),
                          "--data_split", "10,0,0", "--max_seq_len", "48", "--per_device_train_batch_size", "32",
                          "--gradient_accumulation_steps", "3", "--num_train_epochs", "1", "--dtype", "fp32",
                          "--data_output_path", str(tmp_path / "cache"), *batching])
    micro = [reads for name, reads in phases if name == "micro"]
    finish = [reads for name, reads in phases if name == "finish"]
    assert len(micro) >= 6 and len(finish) == len(history["loss"]) >= 2
    assert all(reads == [] for reads in micro), micro
    assert all([name for name, _ in reads] == ["tolist"] for reads in finish), finish
    assert OnDevice.reads, "the evaluation's reads are seen: the recorder works"


def test_the_recorder_sees_the_reads_the_loop_used_to_make():
    """What the loop did before: ``loss.item()`` per micro batch and ``int()`` of the moved token count."""
    from sftlib import collate

    OnDevice.reads = []
    loss = torch.tensor(2.0).as_subclass(OnDevice) * 3
    assert train.step_means(loss, {"tokens_per_s": 1.0, "samples_per_s": 2.0}, "cpu") == [6.0, 1.0, 2.0]
    batch = on_device({"input_ids": torch.ones(2, 3, dtype=torch.long), "num_tokens": torch.tensor(5)}, "cpu")
    assert collate.pop_token_count(batch) == 5
    assert [name for name, _ in OnDevice.reads] == ["tolist", "__int__"]
