"""sftlib.optim.build_optimizer: where FusedAdam's CUDA op cannot be built, torch's AdamW trains instead,
with one line saying why. The build failure is DeepSpeed's own check (``op_builder/builder.py``'s
``assert_no_cuda_mismatch``) run against a host with no CUDA toolkit, or one whose toolkit is CUDA 12
while torch's CUDA is 13; the op builder FusedAdam asks is replaced by one that runs that check."""

from types import SimpleNamespace

import pytest
import torch

from sftlib import optim


@pytest.fixture
def unbuildable(monkeypatch):
    """FusedAdam's op builder, replaced by one whose ``load`` first runs DeepSpeed's toolkit check."""
    import deepspeed.ops.adam.fused_adam as fused_adam
    from deepspeed.ops.op_builder import builder

    class CheckingBuilder:
        def load(self, verbose=False):
            builder.assert_no_cuda_mismatch("fused_adam")
            raise AssertionError("the check passed: this host could build the op")

    monkeypatch.setattr(fused_adam, "FusedAdamBuilder", CheckingBuilder)
    return monkeypatch, builder


def model_groups():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    return model, optim.get_optimizer_grouped_parameters(model, weight_decay=0.1)


@pytest.mark.parametrize("host, why", [
    ("no toolkit", "MissingCUDAException: CUDA_HOME does not exist, unable to compile CUDA op(s)"),
    ("toolkit 12.8, torch CUDA 13.0", "CUDAMismatchException: >- DeepSpeed Op Builder: Installed CUDA version 12.8 "
                                      "does not match the version torch was compiled with 13.0"),
])
def test_an_unbuildable_fusedadam_falls_back_to_fused_torch_adamw_with_one_line(unbuildable, capsys, host, why):
    import torch.utils.cpp_extension

    monkeypatch, builder = unbuildable
    if host == "no toolkit":
        monkeypatch.setattr(torch.utils.cpp_extension, "CUDA_HOME", None)
    else:
        monkeypatch.setattr(builder, "installed_cuda_version", lambda name="": ("12", "8"))
        monkeypatch.setattr(torch.version, "cuda", "13.0")
    model, groups = model_groups()
    opt = optim.build_optimizer(SimpleNamespace(offload=False, learning_rate=1e-3), groups, "cuda")
    assert type(opt) is torch.optim.AdamW and opt.defaults["fused"] is True and opt.defaults["betas"] == (0.9, 0.95)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0], "DeepSpeed-Chat's groups kept"
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"FusedAdam's CUDA op cannot be built here ({why}")
    assert lines[0].endswith("; training with torch.optim.AdamW(fused=True) instead")
    (model(torch.arange(8.0).reshape(2, 4)) ** 3).sum().backward()
    before = [p.detach().clone() for p in model.parameters()]
    opt.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters())), "every parameter trains"


def test_without_a_fused_kernel_the_fallback_is_foreach(unbuildable, capsys):
    monkeypatch, _ = unbuildable
    import torch.utils.cpp_extension

    monkeypatch.setattr(torch.utils.cpp_extension, "CUDA_HOME", None)
    real = torch.optim.AdamW

    class NoFusedKernel(real):
        def __init__(self, params, fused=None, **kwargs):
            if fused:
                raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of "
                                   "supported devices")
            super().__init__(params, fused=fused, **kwargs)

    monkeypatch.setattr(torch.optim, "AdamW", NoFusedKernel)
    opt = optim.build_optimizer(SimpleNamespace(offload=False, learning_rate=1e-3), model_groups()[1], "cuda")
    assert isinstance(opt, real) and opt.defaults["foreach"] is True and not opt.defaults["fused"]
    assert capsys.readouterr().out.strip().endswith("training with torch.optim.AdamW(foreach=True) instead")


def test_the_cpu_and_offload_choices_are_deepspeed_chats():
    _, groups = model_groups()
    cpu = optim.build_optimizer(SimpleNamespace(offload=False, learning_rate=1e-3), groups, "cpu")
    assert type(cpu) is torch.optim.AdamW and not cpu.defaults["fused"] and cpu.defaults["betas"] == (0.9, 0.95)
