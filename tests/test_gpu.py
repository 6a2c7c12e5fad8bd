"""GPU: the same stop/resume proof on CUDA over NCCL, bf16, Megatron's deterministic mode, and the
shipped GPU scenarios (the built-in twin and an unmodified Megatron-LM) end to end.

Runs where CUDA is present (the device machines); skips elsewhere, saying why. Every check has a one-GPU
form (TP1), since one-GPU machines are what is lent most often; the TP2 forms need two GPUs. Compared
bitwise (what deterministic mode gives in practice) and, as the default GPU oracle, within Megatron's
thresholds.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from pathlib import Path

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
    pytest.mark.skipif(cuda_devices() < 1, reason="needs CUDA; this machine has no CUDA device"),
]
REPO = Path(__file__).resolve().parents[1]

HAS_TE = importlib.util.find_spec("transformer_engine") is not None
_NO_TE = pytest.mark.skipif(not HAS_TE, reason="transformer-engine is not installed here (docs/gpu.md: GPU brings it)")
IMPLS = [pytest.param("local", "torch", id="local-torch"), pytest.param("local", "megatron", id="local-megatron"),
         pytest.param("transformer_engine", "torch", id="transformer_engine-torch", marks=_NO_TE),
         pytest.param("transformer_engine", "megatron", id="transformer_engine-megatron", marks=_NO_TE)]
"""Every case is listed on every machine: one that cannot run here is reported as skipped with its reason."""


def gpu_config(run_dir, world_size: int, impl: str, fsdp: str) -> GPT3Config:
    mapping = {
        "preset": "upstream_gpu", "world_size": world_size, "tensor_parallel": min(world_size, 2),
        "transformer_impl": impl,
        "fsdp": fsdp, "train_iters": int(os.environ.get("CHAOS_GPU_ITERS", "20")), "save_interval": 10,
        "async_save": False, "lr_warmup_iters": 2,
        "bf16": os.environ.get("CHAOS_GPU_BF16", "1") == "1",
    }
    return GPT3Config.from_mapping(mapping, "gpu-test").with_run_dir(run_dir)


TOPOLOGIES = [pytest.param(w, id="tp1" if w == 1 else f"tp2xdp{w // 2}",
                           marks=pytest.mark.skipif(cuda_devices() < w, reason=f"needs {w} GPUs; this machine has "
                                                                               f"{cuda_devices()}"))
              for w in (1, 2, 4)]
"""World sizes: 1 = TP1 (one GPU), 2 = TP2xDP1, 4 = TP2xDP2; one this machine lacks the GPUs for is skipped."""


def topology_id(world_size: int) -> str:
    return "tp1" if world_size == 1 else f"tp2xdp{world_size // 2}"

# (impl, fsdp, world size) seen bitwise with an equal final hash on H100/H200 in deterministic mode
# (docs/benchmarks.md#gpu-runs; TP1 with both FSDPs on one H200, 2026-12-03): held to that. The rest are held to
# Megatron's thresholds (Megatron-FSDP at dp >= 2 drifts after a resume; the TE cases below were not all measured).
MEASURED_BITWISE = {("local", "torch", 1), ("local", "megatron", 1), ("local", "torch", 2), ("local", "torch", 4),
                    ("transformer_engine", "torch", 4), ("local", "megatron", 2)}


@pytest.mark.parametrize("world_size", TOPOLOGIES)
@pytest.mark.parametrize("impl,fsdp", IMPLS)
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
    first_difference = min((s for s in expected if actual[s] != expected[s]), default=None)
    norms = [e["grad_norm"] for e in events(golden_dir, "metrics", 0)][:2]
    print(f"GPU {impl}/{fsdp} world={world_size}: bitwise={bitwise} worst relative diff={worst:.3e} "
          f"first differing step {first_difference} (resumed after {stop_at}) "
          f"losses 1..{max(expected)}: {expected[1]:.5f} -> {expected[max(expected)]:.5f} grad norms {norms}")
    assert worst <= 0.05, "outside Megatron's lm loss threshold (rtol 0.05)"
    assert events(resumed_dir, "checkpoint_loaded", rank=0)[-1]["iteration"] == stop_at
    same_hash = events(golden_dir, "final_state", 0)[-1]["state_hash"] == events(resumed_dir, "final_state", 0)[-1]["state_hash"]
    print(f"final state hash equal: {same_hash}")
    if (impl, fsdp, world_size) in MEASURED_BITWISE:
        assert bitwise and same_hash, f"not bitwise: first differing step {first_difference}, hash equal {same_hash}"


@pytest.mark.parametrize("world_size", TOPOLOGIES)
def test_megatron_fsdp_gradients_match_fsdp2(tmp_path, world_size):
    """Same seed, same init, same data: Megatron-FSDP's step-1 loss and grad norm equal FSDP2's within bf16
    noise. Megatron-FSDP's own grad buffer doubling at dp=1 (megatron-core 0.16.1, see
    model.megatron_zero_strategy) showed up as a grad norm 70x FSDP2's while the loss still fell."""
    first_step = {}
    for fsdp in ("torch", "megatron"):
        config = dataclasses.replace(gpu_config(tmp_path / fsdp, world_size, "local", fsdp), train_iters=2)
        assert run_attempt(config, tmp_path / fsdp, 1) == [0] * world_size, output_of(tmp_path / fsdp, 1)
        first_step[fsdp] = events(tmp_path / fsdp, "metrics", 0)[0]
    torch_step, megatron_step = first_step["torch"], first_step["megatron"]
    print(f"GPU step 1, {topology_id(world_size)}: FSDP2 loss {torch_step['lm_loss']:.6f} grad norm "
          f"{torch_step['grad_norm']:.4f}; Megatron-FSDP loss {megatron_step['lm_loss']:.6f} grad norm "
          f"{megatron_step['grad_norm']:.4f}")
    assert megatron_step["lm_loss"] == pytest.approx(torch_step["lm_loss"], rel=1e-2)
    assert megatron_step["grad_norm"] == pytest.approx(torch_step["grad_norm"], rel=5e-2)


@pytest.mark.parametrize("world_size", TOPOLOGIES)
def test_megatron_fsdp_checkpoint_round_trip_is_exact(tmp_path, world_size):
    """Train 3 steps and save; a second attempt loads iter 3 and trains nothing: the state hash of what it
    loaded (every parameter and Adam shard, keyed by global offset) equals the saved run's. Megatron-FSDP's
    uneven dp shards land at wrong offsets unless DCP is given their real chunk metadata
    (checkpoint._describe_uneven_shards). Exact even where training itself is not run-to-run deterministic."""
    config = dataclasses.replace(gpu_config(tmp_path, world_size, "local", "megatron"), train_iters=3)
    for attempt in (1, 2):
        assert run_attempt(config, tmp_path, attempt) == [0] * world_size, output_of(tmp_path, attempt)
    assert events(tmp_path, "checkpoint_loaded", rank=0)[-1]["iteration"] == 3
    saved, loaded = [event["state_hash"] for event in events(tmp_path, "final_state", 0)]
    print(f"GPU Megatron-FSDP round trip {topology_id(world_size)}: saved {saved[:12]} loaded {loaded[:12]}")
    assert loaded == saved


# ---- the shipped GPU scenarios, end to end ---------------------------------------------------------------
def _run_scenario(path: Path, tmp_path, overrides: dict | None = None):
    from chaos.runner import run_scenario
    from chaos.scenario import load_scenario

    result = run_scenario(load_scenario(path, overrides or {}), out_dir=tmp_path / "run", say=print)
    print(result.summary)
    return result


def test_gpu_twin_one_gpu_scenario_passes(tmp_path):
    """The built-in GPU twin on one GPU: the four faults of the CPU flagship (mid-backward, between the shard
    files of an async save, graceful SIGTERM, during the restarted run's load), Megatron's thresholds."""
    result = _run_scenario(REPO / "scenarios" / "gpu" / "gpt3_mcore_tp1_zero3_resume_fsdp_dtensor_1gpu.yaml", tmp_path)
    assert result.verdict == "pass", result.summary


MEGATRON_LM = os.environ.get("MEGATRON_LM")


@pytest.mark.skipif(not MEGATRON_LM or not (Path(MEGATRON_LM) / "pretrain_gpt.py").is_file(),
                    reason="needs an upstream Megatron-LM checkout: set MEGATRON_LM to a folder holding pretrain_gpt.py")
def test_megatron_lm_one_gpu_scenario_gives_a_verdict(tmp_path):
    """An unmodified Megatron-LM on one GPU, killed four ways: every planned fault lands (observed) and every
    applicable check decides. A failing check here is a finding about Megatron-LM, reported as such."""
    result = _run_scenario(REPO / "scenarios" / "megatron_lm" / "gpt3_mcore_tp1_zp_z3_resume_fsdp_dtensor_1gpu.yaml",
                           tmp_path)
    checks = {c["name"]: c for c in result.checks}
    assert checks["faults_landed"]["status"] == "pass", checks["faults_landed"]
    # Megatron-LM prints no state hash: its final checkpoint, read from outside, decides final_state; stalls
    # and node_loss have nothing to judge without a pause, straggler, partition or node loss planned
    undecided = [name for name, c in checks.items() if c["status"] in ("error",) or
                 (c["status"] == "skip" and name not in ("stalls", "node_loss"))]
    assert not undecided, {name: checks[name]["detail"] for name in undecided}
    # two uninterrupted runs on one GPU with deterministic mode are identical: the rule is exact
    assert result.report["golden"]["mode"] == "exact", result.report["golden"]["rule"]
    assert checks["trajectory"]["status"] == "pass", checks["trajectory"]


@pytest.mark.skipif(not MEGATRON_LM or not (Path(MEGATRON_LM) / "pretrain_gpt.py").is_file(),
                    reason="needs an upstream Megatron-LM checkout: set MEGATRON_LM to a folder holding pretrain_gpt.py")
def test_megatron_lm_restart_without_its_rng_fails_trajectory_and_checkpoint_state(tmp_path):
    """The one-GPU job with --no-load-rng (a restart that replays the RNG: dropout masks after a restart are
    those of the first iterations), one SIGKILL. Inside Megatron's 5 % it would pass; against a golden of two
    identical runs the loss and the saved RNG and parameters are seen to differ."""
    from chaos.scenario import load_scenario

    path = REPO / "scenarios" / "megatron_lm" / "gpt3_mcore_tp1_zp_z3_resume_fsdp_dtensor_1gpu.yaml"
    args = list(load_scenario(path).workload_mapping["args"]) + ["--no-load-rng"]
    result = _run_scenario(path, tmp_path, {"workload.args": args, "restart.max_restarts": 1, "faults": [
        {"at": {"step": 10, "delay_s": 0.5}, "target": {"rank": 0}, "signal": "SIGKILL"}]})
    checks = {c["name"]: c for c in result.checks}
    assert checks["trajectory"]["status"] == "fail", checks["trajectory"]
    assert checks["checkpoint_state"]["status"] == "fail" and "rng" in checks["checkpoint_state"]["detail"].lower()


@pytest.mark.skipif(not MEGATRON_LM or not (Path(MEGATRON_LM) / "pretrain_gpt.py").is_file(),
                    reason="needs an upstream Megatron-LM checkout: set MEGATRON_LM to a folder holding pretrain_gpt.py")
def test_megatron_lm_job_that_is_not_reproducible_gets_a_measured_tolerance(tmp_path):
    """MoE without deterministic mode: its two uninterrupted runs differ, so the golden measures by how much
    and the loss passes within 4x that spread (no false failure); the varying tensors are held to it too."""
    result = _run_scenario(REPO / "scenarios" / "megatron_lm" / "gpt3_moe_tp1_nondeterministic_1gpu.yaml", tmp_path)
    checks = {c["name"]: c for c in result.checks}
    assert result.report["golden"]["mode"] == "calibrated", result.report["golden"]["rule"]
    assert checks["trajectory"]["status"] == "pass", checks["trajectory"]
    differing = [d["key"] for i in checks["checkpoint_state"]["evidence"]["iterations"]
                 for d in i.get("differences", [])]
    # what differs is Megatron's CPU generator only (docs/findings/megatron-lm-cpu-rng-after-resume.md)
    assert all(key.endswith("torch_rng_state") for key in differing), differing


@pytest.mark.skipif(not MEGATRON_LM or not (Path(MEGATRON_LM) / "pretrain_gpt.py").is_file(),
                    reason="needs an upstream Megatron-LM checkout: set MEGATRON_LM to a folder holding pretrain_gpt.py")
def test_selftest_of_an_unmodified_megatron_lm_on_one_gpu(tmp_path):
    """`chaos selftest` on the one-GPU Megatron-LM job (its control accepts Megatron-LM's two known differences):
    the RNG bugs apply on CUDA and, like a shifted data position and the smallest state change (one ulp, which no
    printed loss shows), are caught. Four bugs: about 6 minutes on an H200 (docs/benchmarks.md#selftest-scores has all nine)."""
    from chaos.scenario import load_scenario
    from chaos.selftest import CAUGHT, run_selftest

    bugs = ("cuda_rng_not_restored", "data_shifted_one_sample", "one_ulp_one_tensor", "older_checkpoint_loaded")
    result = run_selftest(load_scenario(REPO / "scenarios" / "megatron_lm" / "selftest_tp1_1gpu.yaml"),
                          tmp_path / "selftest", bugs)
    print(result.summary)
    assert result.control.verdict == "pass", result.control.summary
    assert [o.verdict for o in result.outcomes] == [CAUGHT] * len(bugs), result.summary
    assert "checkpoint_state" in result.outcome("one_ulp_one_tensor").checks
