"""The system under test, on CPU over gloo with real ranks: bitwise stop/resume for TP1xDP2, TP2xDP1 and
TP2xDP2, TP shards back on the right ranks, reshard on load, indexed data, async save."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from chaos.workloads.gpt3.config import GPT3Config
from workload_runs import events, losses, output_of, run_attempt

TINY = {"train_iters": 6, "save_interval": 3}


def config_for(run_dir: Path, **overrides) -> GPT3Config:
    mapping = {**TINY, **overrides}
    return GPT3Config.from_mapping(mapping, "test").with_run_dir(run_dir)


def run_ok(config: GPT3Config, run_dir: Path, attempt: int) -> None:
    codes = run_attempt(config, run_dir, attempt)
    assert codes == [0] * config.world_size, f"attempt {attempt} exit codes {codes}\n{output_of(run_dir, attempt)}"


def final_hash(run_dir: Path) -> str:
    return events(run_dir, "final_state", rank=0)[-1]["state_hash"]


@pytest.fixture(scope="module")
def golden_runs(tmp_path_factory):
    """Uninterrupted runs, one per topology, computed once for the module."""
    cache: dict[tuple[int, int], Path] = {}

    def get(world_size: int, tensor_parallel: int) -> Path:
        key = (world_size, tensor_parallel)
        if key not in cache:
            run_dir = tmp_path_factory.mktemp(f"golden-ws{world_size}-tp{tensor_parallel}")
            run_ok(config_for(run_dir, world_size=world_size, tensor_parallel=tensor_parallel), run_dir, 1)
            cache[key] = run_dir
        return cache[key]

    return get


# TP2 x DP2 stopped and resumed is the flagship scenario's shape, run end to end with a graceful SIGTERM stop,
# kills and every check (tests/test_scenarios_cpu.py): here it runs with the soaks, keeping the suite in budget
@pytest.mark.parametrize("world_size,tensor_parallel", [
    (2, 1), (2, 2), pytest.param(4, 2, marks=pytest.mark.soak)], ids=["tp1xdp2", "tp2xdp1", "tp2xdp2"])
def test_stop_and_resume_is_bitwise_equal_to_the_uninterrupted_run(tmp_path, golden_runs, world_size, tensor_parallel):
    golden = golden_runs(world_size, tensor_parallel)
    stopped = dataclasses.replace(config_for(tmp_path, world_size=world_size, tensor_parallel=tensor_parallel), exit_at_iter=4)
    run_ok(stopped, tmp_path, 1)
    assert max(losses(tmp_path, attempt=1)) == 4
    run_ok(dataclasses.replace(stopped, exit_at_iter=None), tmp_path, 2)

    loaded = events(tmp_path, "checkpoint_loaded", rank=0)
    assert [e["iteration"] for e in loaded] == [0, 4]
    expected, actual = losses(golden), losses(tmp_path)
    assert sorted(expected) == list(range(1, 7))
    for step in expected:
        assert actual[step] == expected[step], f"Loss mismatch at step {step}: baseline={expected[step]!r}, test={actual[step]!r}"
    assert final_hash(tmp_path) == final_hash(golden)


def test_each_tp_rank_gets_its_own_shard_back(tmp_path, golden_runs):
    """TRAP 1: the checkpoint holds TP-global tensors (both TP shards at their own offsets), and the
    deliberately broken layout (FSDP's dp-only DTensors) really does corrupt the resume."""
    import torch.distributed.checkpoint as dcp

    golden = golden_runs(4, 2)
    metadata = dcp.FileSystemReader(str(golden / "checkpoints" / "iter_0000003")).read_metadata()
    output = metadata.state_dict_metadata["model/output_layer.weight"]
    assert list(output.size) == [1024, 128], "vocab-parallel output layer must be saved at its TP-global shape"
    offsets = sorted(tuple(chunk.offsets) for chunk in output.chunks)
    assert offsets == [(0, 0), (256, 0), (512, 0), (768, 0)], "tp x dp shards, each at its own global offset"
    row_parallel = metadata.state_dict_metadata["model/decoder.layers.0.mlp.linear_fc2.weight"]
    assert list(row_parallel.size) == [128, 512]

    broken = dataclasses.replace(config_for(tmp_path), exit_at_iter=4, bugs=("swap_tp_shards",))
    run_ok(broken, tmp_path, 1)
    run_ok(dataclasses.replace(broken, exit_at_iter=None), tmp_path, 2)
    expected, actual = losses(golden), losses(tmp_path)
    assert all(actual[s] == expected[s] for s in range(1, 5))
    assert actual[5] != expected[5], "with both TP ranks loading one shard the resumed loss must drift"


def test_dropout_rng_must_be_restored(tmp_path, golden_runs):
    """TRAP 2: dropout is on by default; a trainer that does not restore RNG drifts after the resume."""
    golden = golden_runs(4, 2)
    broken = dataclasses.replace(config_for(tmp_path), exit_at_iter=4, bugs=("no_rng_restore",))
    run_ok(broken, tmp_path, 1)
    run_ok(dataclasses.replace(broken, exit_at_iter=None), tmp_path, 2)
    assert losses(tmp_path)[5] != losses(golden)[5]


def test_resume_with_a_different_data_parallel_size(tmp_path, golden_runs):
    golden = golden_runs(4, 2)
    first = dataclasses.replace(config_for(tmp_path, world_size=4, tensor_parallel=2), exit_at_iter=3)
    run_ok(first, tmp_path, 1)
    resharded = config_for(tmp_path, world_size=2, tensor_parallel=2)  # dp 2 -> 1, same TP
    run_ok(resharded, tmp_path, 2)
    loaded = events(tmp_path, "checkpoint_loaded", rank=0)
    assert loaded[-1]["iteration"] == 3
    expected, actual = losses(golden), losses(tmp_path, attempt=2)
    assert sorted(actual) == [4, 5, 6]
    for step in actual:
        # Same weights and data, but each sample now meets another rank's dropout stream and another
        # reduction order: close, not bitwise. A fresh model would be back at ~6.95 (step 1's loss).
        assert math.isclose(actual[step], expected[step], rel_tol=2e-3), (step, actual[step], expected[step])
    consumed = [e["consumed_samples"] for e in events(tmp_path, "metrics", rank=0) if e["attempt"] == 2]
    assert consumed == [32, 40, 48]


def test_async_save_and_keep_last_resume_bitwise(tmp_path, golden_runs):
    golden = golden_runs(4, 2)
    stopped = dataclasses.replace(config_for(tmp_path, async_save=True, keep_last=1), exit_at_iter=4)
    run_ok(stopped, tmp_path, 1)
    run_ok(dataclasses.replace(stopped, exit_at_iter=None), tmp_path, 2)
    assert losses(tmp_path) == losses(golden)
    committed = [e["iteration"] for e in events(tmp_path, "checkpoint_committed", rank=0)]
    assert committed == [3, 4, 6]
    kept = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith("iter_"))
    assert kept == ["iter_0000006"], "keep_last=1 keeps only the newest committed checkpoint"


def test_indexed_dataset_by_path_prefix(tmp_path):
    """megatron's .bin/.idx format, built here from random documents: the ranks train on it (their batches'
    data hashes are not the mock data's), and a stop at 2 + resume is bitwise the uninterrupted run on it
    (the position resumes from consumed samples)."""
    import numpy as np
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    prefix = tmp_path / "data" / "tiny_text_document"
    prefix.parent.mkdir()
    builder = IndexedDatasetBuilder(str(prefix) + ".bin", dtype=np.uint16)
    generator = np.random.default_rng(0)
    for _ in range(64):
        builder.add_document(torch.from_numpy(generator.integers(0, 1000, size=300).astype(np.int64)), [300])
    builder.finalize(str(prefix) + ".idx")

    def metrics_of(run_dir: Path) -> dict[int, tuple[float, str]]:
        """step -> (lm loss, data hash), the latest attempt winning."""
        return {e["step"]: (e["lm_loss"], e["data_hash"]) for e in events(run_dir, "metrics", rank=0)}

    whole_dir, run_dir = tmp_path / "whole", tmp_path / "run"
    shape = dict(world_size=2, tensor_parallel=2, train_iters=4, save_interval=2)
    run_ok(dataclasses.replace(config_for(whole_dir, **shape), data_path=str(prefix)), whole_dir, 1)
    config = dataclasses.replace(config_for(run_dir, **shape), data_path=str(prefix), exit_at_iter=2)
    run_ok(config, run_dir, 1)
    run_ok(dataclasses.replace(config, exit_at_iter=None), run_dir, 2)
    resumed, whole = metrics_of(run_dir), metrics_of(whole_dir)
    assert sorted(resumed) == [1, 2, 3, 4] and all(math.isfinite(loss) for loss, _ in resumed.values())
    assert resumed == whole, "the resumed run on the indexed dataset is not the uninterrupted one"
    mock_dir = tmp_path / "mock"  # the same job on the mock data, one step
    run_ok(dataclasses.replace(config_for(mock_dir, **shape), exit_at_iter=1), mock_dir, 1)
    assert metrics_of(mock_dir)[1][1] != whole[1][1], "the ranks trained on the mock data, not data_path"


def test_checkpoint_has_every_piece_of_state(golden_runs):
    import torch.distributed.checkpoint as dcp

    directory = golden_runs(4, 2) / "checkpoints" / "iter_0000006"
    keys = set(dcp.FileSystemReader(str(directory)).read_metadata().state_dict_metadata)
    assert {"train", "rng/rank_0", "rng/rank_1", "rng/rank_2", "rng/rank_3"} <= keys
    assert any(k.startswith("optim/") and k.endswith("/exp_avg_sq") for k in keys)
    manifest = json.loads((directory / "chaos_manifest.json").read_text())
    assert manifest["iteration"] == 6 and ".metadata" in manifest["files"]
    assert (directory.parent / "latest_checkpointed_iteration.txt").read_text() == "6"
    assert not any(p.name.startswith(".tmp") for p in directory.parent.iterdir())


def test_a_rank_of_an_earlier_run_never_commits_into_a_new_one(tmp_path):
    """A rank that outlived its run (its token) while a new run took over the run directory (another token)
    trains on, but never commits a checkpoint or writes the tracker there: it stops at its first commit."""
    from chaos import control

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / control.RUN_TOKEN_FILE).write_text("the-new-run")
    config = config_for(run_dir, world_size=2, tensor_parallel=2, train_iters=4, save_interval=2)
    codes = run_attempt(config, run_dir, 1, env={control.ENV_RUN_DIR: str(run_dir),
                                                 control.ENV_RUN_TOKEN: "an-earlier-run"})
    assert codes[0] != 0, codes
    checkpoints = run_dir / "checkpoints"
    assert not checkpoints.exists() or not [p for p in checkpoints.iterdir() if p.name.startswith("iter_")]
    assert not (checkpoints / "latest_checkpointed_iteration.txt").exists()
    assert "now belongs to another run" in output_of(run_dir, 1)
