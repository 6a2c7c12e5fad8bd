"""GPU: the same stop/resume proof on CUDA over NCCL, bf16, Megatron's deterministic mode.

Runs where CUDA is present (the device machines); skips elsewhere, saying why. Compared bitwise (what
deterministic mode gives in practice) and, as the default GPU oracle, within Megatron's thresholds.
"""

from __future__ import annotations

import dataclasses
import os

import pytest

from chaos.workloads.gpt3.config import GPT3Config
from workload_runs import events, losses, output_of, run_attempt


def cuda_devices() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(cuda_devices() < 2, reason="needs CUDA with >= 2 GPUs (TP=2); this machine has "
                       f"{cuda_devices()} CUDA device(s)"),
]

IMPLS = [("local", "torch"), ("local", "megatron")]
if os.environ.get("CHAOS_GPU_TE") == "1":  # set where transformer-engine is installed (see README: GPU)
    IMPLS += [("transformer_engine", "torch"), ("transformer_engine", "megatron")]


def gpu_config(run_dir, world_size: int, impl: str, fsdp: str) -> GPT3Config:
    mapping = {
        "preset": "upstream_gpu", "world_size": world_size, "tensor_parallel": 2, "transformer_impl": impl,
        "fsdp": fsdp, "train_iters": int(os.environ.get("CHAOS_GPU_ITERS", "20")), "save_interval": 10,
        "async_save": False, "lr_warmup_iters": 2,
        "bf16": os.environ.get("CHAOS_GPU_BF16", "1") == "1",
    }
    return GPT3Config.from_mapping(mapping, "gpu-test").with_run_dir(run_dir)


TOPOLOGIES = [2, 4] if cuda_devices() >= 4 else [2]


@pytest.mark.parametrize("world_size", TOPOLOGIES, ids=[f"tp2xdp{w // 2}" for w in TOPOLOGIES])
@pytest.mark.parametrize("impl,fsdp", IMPLS, ids=[f"{i}-{f}" for i, f in IMPLS])
def test_gpu_stop_resume_matches_uninterrupted(tmp_path, impl, fsdp, world_size):
    golden_dir, resumed_dir = tmp_path / "golden", tmp_path / "resumed"
    golden = gpu_config(golden_dir, world_size, impl, fsdp)
    codes = run_attempt(golden, golden_dir, 1)
    assert codes == [0] * world_size, output_of(golden_dir, 1)
    stop_at = golden.train_iters // 2 + 3
    stopped = dataclasses.replace(gpu_config(resumed_dir, world_size, impl, fsdp), exit_at_iter=stop_at)
    assert run_attempt(stopped, resumed_dir, 1) == [0] * world_size, output_of(resumed_dir, 1)
    assert run_attempt(dataclasses.replace(stopped, exit_at_iter=None), resumed_dir, 2) == [0] * world_size, output_of(resumed_dir, 2)

    expected, actual = losses(golden_dir), losses(resumed_dir)
    assert sorted(actual) == sorted(expected)
    bitwise = all(actual[s] == expected[s] for s in expected)
    worst = max(abs(actual[s] - expected[s]) / abs(expected[s]) for s in expected)
    norms = [e["grad_norm"] for e in events(golden_dir, "metrics", 0)][:2]
    print(f"GPU {impl}/{fsdp} world={world_size}: bitwise={bitwise} worst relative diff={worst:.3e} "
          f"losses 1..{max(expected)}: {expected[1]:.5f} -> {expected[max(expected)]:.5f} grad norms {norms}")
    assert worst <= 0.05, "outside Megatron's lm loss threshold (rtol 0.05)"
    assert events(resumed_dir, "checkpoint_loaded", rank=0)[-1]["iteration"] == stop_at
    same_hash = events(golden_dir, "final_state", 0)[-1]["state_hash"] == events(resumed_dir, "final_state", 0)[-1]["state_hash"]
    print(f"final state hash equal: {same_hash}")
