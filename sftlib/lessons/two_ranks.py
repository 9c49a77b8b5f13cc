"""``print_rank_0`` and ``get_all_reduce_mean`` on real ranks: each rank reports what it saw.

Run it with any launcher that sets RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT::

    OMP_NUM_THREADS=1 deepspeed --num_gpus 2 --master_port 29611 --module sftlib.lessons.two_ranks --out DIR
    OMP_NUM_THREADS=1 torchrun --nproc-per-node 2 --master-port 29611 -m sftlib.lessons.two_ranks --out DIR

Every rank writes ``DIR/rank{r}.json``. Explained in notebooks/02_utility_functions.ipynb.
"""

from __future__ import annotations

import argparse
import json
import os

import torch
import torch.distributed as dist

from sftlib.dist import settle_gloo_hostname_warning
from sftlib.utils import get_all_reduce_mean, print_rank_0


def dschat_all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """The original's version: all-reduces the caller's tensor in place (it becomes the SUM)."""
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor / dist.get_world_size()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for rank{r}.json")
    p.add_argument("--local_rank", type=int, default=-1, help="set by the deepspeed launcher; unused")
    args = p.parse_args(argv)
    settle_gloo_hostname_warning()  # no "Unable to resolve hostname" in front of the ranks' lines (containers)
    dist.init_process_group("gloo")  # env:// rendezvous; deepspeed.init_distributed() does this on CPU
    rank, world = dist.get_rank(), dist.get_world_size()

    loss = torch.tensor([1.5 + 2.0 * rank ** 2])  # a different "loss" on every rank
    print(f"[rank {rank}] plain print: my loss is {loss.item()}\n", end="", flush=True)  # one write per line
    dist.barrier()
    mine = loss.clone()
    mean = get_all_reduce_mean(mine)
    print_rank_0(f"print_rank_0: mean loss over {world} ranks = {mean.item()}")
    theirs = loss.clone()
    dschat_mean = dschat_all_reduce_mean(theirs)
    report = {"rank": rank, "world_size": world, "loss": loss.item(), "mean": mean.item(),
              "input_after": mine.item(), "dschat_mean": dschat_mean.item(), "dschat_input_after": theirs.item()}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"rank{rank}.json"), "w") as f:
        json.dump(report, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    from sftlib.cli import run

    run(main)
