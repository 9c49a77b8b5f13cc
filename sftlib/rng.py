"""Random number generators: seeding a run, and every generator's state for an exact resume.

``set_random_seed`` is DeepSpeed-Chat's (``dschat/utils/utils.py``; also importable from
``sftlib.utils``). ``rng_state`` / ``restore_rng`` are what a checkpoint adds: Python's, numpy's and
torch's generators, and every CUDA device's, so that dropout after a resume draws what it would have.

Explained in notebooks/02_utility_functions.ipynb.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from sftlib.errors import SFTError


def set_random_seed(seed: int | None) -> None:
    """Seed transformers, Python, numpy, torch and the accelerator, for a repeatable run.

    Every rank gets the same seed, so every rank builds the same initial weights (LoRA's random
    matrices included) before DeepSpeed starts. ``None`` leaves all generators as they are.
    """
    if seed is None:
        return
    import transformers
    from deepspeed.accelerator import get_accelerator

    transformers.set_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    get_accelerator().manual_seed_all(seed)


def rng_state() -> dict:
    """Python's, numpy's and torch's CPU generators, plus every CUDA device's when CUDA is present
    (dropout on a GPU draws from the device's generator, not the CPU one)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    """Put the generators back where ``rng_state`` found them (CUDA's too, when it saved them)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        if not torch.cuda.is_available() or torch.cuda.device_count() != len(state["cuda"]):
            raise SFTError(f"the checkpoint holds the RNG states of {len(state['cuda'])} CUDA devices; this "
                           "process sees a different number: resume on the same GPUs for an exact resume")
        torch.cuda.set_rng_state_all(state["cuda"])
