"""What megatron-core needs to run on CPU over gloo, applied only when device == cpu.

Measured: two substitutions are enough for GPTModel with TP=2 forward/backward/step:
1. `GlobalMemoryBuffer.get_tensor` allocates on `torch.cuda.current_device()`; on CPU it must allocate
   host memory (used by the TP all-gather paths).
2. The TP RNG tracker (`tensor_parallel.random`) forks the CUDA generator; on CPU the tracker keeps CPU
   generator states instead, so TP-region dropout has its own stream exactly like on GPU.
We patch in place instead of forking megatron-core, and `apply()` is idempotent.
"""

from __future__ import annotations

import contextlib
import operator
import os
from functools import reduce

import torch

_APPLIED = False
ENV_ONEDNN = "CHAOS_CPU_ONEDNN"
"""`off`: torch does not use oneDNN in this rank (one of the workload's CPU pins, gpt3.workload.CPU_PINS)."""


class CpuRNGStatesTracker:
    """megatron's CudaRNGStatesTracker, over torch's CPU generator.

    Same contract: `add(name, seed)` creates a named state, `fork(name)` swaps it in for the duration
    of a block and stores the advanced state back, `get_states`/`set_states` are what checkpoints keep.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.states_: dict[str, torch.Tensor] = {}
        self.seeds_: set[int] = set()
        self._is_initialized = False

    def is_initialized(self) -> bool:
        return self._is_initialized

    def get_states(self) -> dict[str, torch.Tensor]:
        return {name: state.clone() for name, state in self.states_.items()}

    def set_states(self, states: dict[str, torch.Tensor]) -> None:
        self._is_initialized = True
        self.states_ = {name: state.clone() for name, state in states.items()}

    def add(self, name: str, seed: int) -> None:
        if seed in self.seeds_:
            raise RuntimeError(f"seed {seed} already exists")
        if name in self.states_:
            raise RuntimeError(f"rng state {name} already exists")
        self._is_initialized = True
        self.seeds_.add(seed)
        generator = torch.Generator()
        generator.manual_seed(seed)
        self.states_[name] = generator.get_state()

    @contextlib.contextmanager
    def fork(self, name: str = "model-parallel-rng"):
        if name not in self.states_:
            raise RuntimeError(f"rng state {name} is not added")
        original = torch.get_rng_state()
        torch.set_rng_state(self.states_[name])
        try:
            yield
        finally:
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(original)


def _cpu_get_tensor(self, tensor_shape, dtype, name, mem_alloc_context=None):
    required = reduce(operator.mul, tensor_shape, 1)
    buffer = self.buffer.get((name, dtype))
    if buffer is None or buffer.numel() < required:
        buffer = self.buffer[(name, dtype)] = torch.empty(required, dtype=dtype, requires_grad=False)
    return buffer[0:required].view(*tensor_shape)


def apply() -> None:
    global _APPLIED
    if _APPLIED:
        return
    import megatron.core.tensor_parallel.random as megatron_random
    import megatron.core.utils as megatron_utils

    megatron_utils.GlobalMemoryBuffer.get_tensor = _cpu_get_tensor
    megatron_random._CUDA_RNG_STATE_TRACKER = CpuRNGStatesTracker()
    megatron_random._CUDA_RNG_STATE_TRACKER_INITIALIZED = True
    if os.environ.get(ENV_ONEDNN) == "off":
        # oneDNN picks its JIT kernels by the CPU it finds (ATEN_CPU_CAPABILITY does not reach it), and the
        # MLP's GELU runs through it: ATen's own kernel instead, under the pinned capability.
        torch.backends.mkldnn.enabled = False
    _APPLIED = True
