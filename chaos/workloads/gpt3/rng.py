"""Every random stream a rank draws from, seeded like Megatron and captured/restored per rank.

Trap 2 (README): with dropout on, an exact resume needs python, numpy, torch CPU, CUDA and the TP
tracker states all restored; any one missing and the loss drifts without an error.
"""

from __future__ import annotations

import random

import numpy as np
import torch


def tracker():
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    return get_cuda_rng_tracker()


def seed_everything(seed: int, tp_rank: int, device: str) -> None:
    """Megatron's _set_random_seed + model_parallel_cuda_manual_seed (pipeline rank 0, no expert offset)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if device == "cuda":
        from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

        model_parallel_cuda_manual_seed(seed)
        return
    offset = seed + 2718
    rng_tracker = tracker()
    rng_tracker.reset()
    rng_tracker.add("data-parallel-rng", seed)
    rng_tracker.add("model-parallel-rng", offset + tp_rank)
    rng_tracker.add("expert-parallel-rng", offset + 100 + tp_rank)


def capture() -> dict:
    """This rank's RNG states, as a picklable object (saved under a per-rank checkpoint key)."""
    states = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch_cpu": torch.get_rng_state(),
        "tracker": {name: state.cpu() for name, state in tracker().get_states().items()},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def restore(states: dict) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch_cpu"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])
    rng_tracker = tracker()
    current = rng_tracker.get_states()
    restored = {}
    for name, state in states["tracker"].items():
        # the CUDA tracker keeps generator states on their device; ours are CPU tensors
        restored[name] = state.to(current[name].device) if name in current and hasattr(current[name], "device") else state
    rng_tracker.set_states(restored)
