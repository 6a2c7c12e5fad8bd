"""Single-process pieces of the workload: the CPU substitutions for megatron-core, the clear error when
transformer-engine is missing, and config validation."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from chaos.errors import InputError
from chaos.workloads.gpt3 import cpu_compat
from chaos.workloads.gpt3.config import GPT3Config


def test_cpu_tracker_forks_its_own_stream_and_restores_the_default():
    tracker = cpu_compat.CpuRNGStatesTracker()
    tracker.add("model-parallel-rng", 1234)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    with tracker.fork("model-parallel-rng"):
        first = torch.rand(3)
    assert torch.equal(torch.get_rng_state(), before), "the default stream must be untouched by a fork"
    with tracker.fork("model-parallel-rng"):
        second = torch.rand(3)
    assert not torch.equal(first, second), "the forked stream advances between forks"
    saved = tracker.get_states()
    with tracker.fork("model-parallel-rng"):
        third = torch.rand(3)
    tracker.set_states(saved)
    with tracker.fork("model-parallel-rng"):
        assert torch.equal(torch.rand(3), third), "set_states restores the stream exactly (checkpoint resume)"
    with pytest.raises(RuntimeError):
        tracker.add("other", 1234)  # a seed used twice would correlate two streams


def test_apply_installs_cpu_buffer_and_tracker():
    import megatron.core.tensor_parallel.random as megatron_random
    from megatron.core.utils import GlobalMemoryBuffer

    cpu_compat.apply()
    cpu_compat.apply()  # idempotent
    assert isinstance(megatron_random.get_cuda_rng_tracker(), cpu_compat.CpuRNGStatesTracker)
    buffer = GlobalMemoryBuffer().get_tensor((4, 8), torch.float32, "test")
    assert buffer.device.type == "cpu" and buffer.shape == (4, 8)


def test_transformer_engine_missing_is_a_clear_error(monkeypatch):
    import builtins

    from chaos.workloads.gpt3 import model

    real_import = builtins.__import__

    def no_te(name, *args, **kwargs):
        if name.startswith("transformer_engine"):
            raise ImportError("No module named 'transformer_engine'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_te)
    config = dataclasses.replace(GPT3Config(), transformer_impl="transformer_engine", device="cuda")
    with pytest.raises(RuntimeError, match=r"transformer-engine>=2.9,<2.12"):
        model.layer_spec(config)


@pytest.mark.parametrize("overrides,field,expected", [
    ({"world_size": 3}, "workload.world_size", "multiple of tensor_parallel"),
    ({"fsdp": "megatron"}, "workload.fsdp", "CUDA-only"),
    ({"transformer_impl": "transformer_engine"}, "workload.transformer_impl", "device: cuda"),
    ({"global_batch_size": 6}, "workload.global_batch_size", "multiple of micro_batch_size"),
    ({"bugs": ["no_rng_restor"]}, "workload.bugs", "did you mean no_rng_restore"),
    ({"tensor_paralel": 2}, "workload.tensor_paralel", "did you mean tensor_parallel"),
    # optional fields (`int | None`) are type-checked too: "4" would never equal a step
    ({"exit_at_iter": "4"}, "workload.exit_at_iter", "expected an integer"),
    ({"load_dir": 5}, "workload.load_dir", "expected a string"),
])
def test_config_errors_name_the_field(overrides, field, expected):
    with pytest.raises(InputError) as error:
        GPT3Config.from_mapping(overrides, "s.yaml")
    assert error.value.field == field and expected in error.value.message


def test_presets_and_derived_sizes():
    tiny = GPT3Config.from_mapping({}, "s.yaml")
    assert (tiny.num_layers, tiny.hidden_size, tiny.num_attention_heads, tiny.seq_length) == (4, 128, 4, 128)
    assert tiny.data_parallel == 2 and tiny.num_microbatches == 2 and tiny.hidden_dropout == 0.1
    upstream = GPT3Config.from_mapping({"preset": "upstream_gpu"}, "s.yaml")
    assert (upstream.num_layers, upstream.hidden_size, upstream.num_attention_heads, upstream.seq_length,
            upstream.micro_batch_size, upstream.global_batch_size) == (12, 512, 8, 1024, 4, 32)
    assert upstream.padded_vocab_size % 256 == 0 and upstream.bf16


def test_parameter_names_lose_every_wrapper_prefix():
    from chaos.workloads.gpt3.model import plain_name

    assert plain_name("module.module.decoder.layers.0.mlp.linear_fc1.weight") == "decoder.layers.0.mlp.linear_fc1.weight"
    assert plain_name("embedding.word_embeddings.weight") == "embedding.word_embeddings.weight"


def test_megatron_fsdp_shards_only_where_dp_has_ranks():
    from chaos.workloads.gpt3.model import megatron_zero_strategy

    assert megatron_zero_strategy(2) == "optim_grads_params"
    assert megatron_zero_strategy(1) == "no_shard"  # megatron-core 0.16.1 doubles grads per microbatch at dp=1


# ---- the GPTDataset loss-mask cache (docs/findings/gptdataset-loss-mask-cache.md) ------------------------
def _train_data(tmp_path, bugs=()):
    from chaos.workloads.gpt3.data import TrainData
    from chaos.workloads.gpt3.parallel import ParallelDims

    config = GPT3Config.from_mapping({"world_size": 1, "tensor_parallel": 1, "bugs": list(bugs)}, "test")
    dims = ParallelDims(rank=0, world_size=1, tp=1, dp=1, tp_rank=0, dp_rank=0, device=torch.device("cpu"),
                        mesh=None)  # dp == 1: no collective, no mesh needed
    return TrainData(config, dims, str(tmp_path / "cache"))


RESUMED_AT = 56
"""In tiny_cpu's mock data, samples 56 and 60 hold a pad label (positions 62 and 59): a process whose first
sample is 56 (a resume after step 7) polluted the cache with position 62."""


@pytest.mark.parametrize("bugs", [(), ("upstream_loss_mask_cache",)], ids=["fixed", "upstream"])
def test_a_batch_is_the_same_whichever_sample_the_process_fetched_first(tmp_path, bugs):
    from_start = _train_data(tmp_path, bugs)
    from_start.global_batch(0)
    continued, continued_hash = from_start.global_batch(RESUMED_AT)
    resumed, resumed_hash = _train_data(tmp_path, bugs).global_batch(RESUMED_AT)
    masks_equal = all(torch.equal(a.loss_mask, b.loss_mask) for a, b in zip(continued, resumed))
    if bugs:  # upstream megatron-core: the resumed process masks sample 56's pad position in every sample
        assert not masks_equal and continued_hash != resumed_hash, "the bug switch must reproduce the upstream bug"
        assert all(m.loss_mask[:, 62].eq(0).all() for m in resumed)
    else:
        assert masks_equal and continued_hash == resumed_hash
        masked = [(micro, *position) for micro, m in enumerate(resumed) for position in m.loss_mask.eq(0).nonzero().tolist()]
        assert masked == [(0, 0, 62), (2, 0, 59)], "only samples 56 and 60 mask their own pad labels"


def test_data_hash_covers_what_the_model_sees(tmp_path):
    import hashlib

    again, digest = _train_data(tmp_path).global_batch(0)

    def digest_of(micro_batches, skip: str = "") -> str:
        h = hashlib.sha256()
        for m in micro_batches:
            for name in ("tokens", "labels", "loss_mask", "position_ids", "attention_mask"):
                if name != skip:
                    h.update(getattr(m, name).contiguous().numpy().tobytes())
        return hashlib.sha256(h.digest()).hexdigest()[:16]

    assert digest_of(again) == digest
    for name in ("labels", "loss_mask", "position_ids", "attention_mask"):
        assert digest_of(again, skip=name) != digest, f"the data hash must cover {name}"


def test_the_upstream_reproducer_still_fails_on_the_installed_megatron_core():
    """The finding's megatron-core-only reproducer: exit 1 while the bug is there. When an upstream release
    fixes it, this fails: update the finding and drop the workaround's reason, not this test's assertion."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "docs" / "findings" / "gptdataset_loss_mask_repro.py"
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "depends on which sample the process fetched first" in done.stderr


# ---- the crash-safe commit ------------------------------------------------------------------------------
class _RecordingProbe:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def point(self, phase, step=None, index=None) -> None:
        self.calls.append(("point", phase, step))

    def checkpoint_committed(self, iteration, path) -> None:
        self.calls.append(("committed", iteration))

    def owns_run_dir(self) -> bool:  # chaos.probe.Probe's answer outside a chaos run (no token given)
        return True


def _checkpointer(tmp_path, probe):
    from chaos.workloads.gpt3.checkpoint import Checkpointer
    from chaos.workloads.gpt3.parallel import ParallelDims

    config = GPT3Config.from_mapping({"world_size": 1, "tensor_parallel": 1}, "test").with_run_dir(tmp_path)
    dims = ParallelDims(rank=0, world_size=1, tp=1, dp=1, tp_rank=0, dp_rank=0, device=torch.device("cpu"), mesh=None)
    return Checkpointer(config, dims, probe)


def test_rank_0_records_the_commit_as_soon_as_the_tracker_names_it(tmp_path, monkeypatch):
    """A rank 0 killed between the tracker update and the closing barrier must not leave a committed
    checkpoint without a checkpoint_committed record (resume_point would fail a correct trainer)."""
    from chaos.workloads.gpt3 import checkpoint

    def killed_at_the_barrier(*args, **kwargs):
        raise RuntimeError("rank 0 died here")

    monkeypatch.setattr(checkpoint.dist, "barrier", killed_at_the_barrier)
    probe = _RecordingProbe()
    saver = _checkpointer(tmp_path, probe)
    temp = saver.save_dir / ".tmp.iter_0000004"
    temp.mkdir(parents=True)
    (temp / "__0_0.distcp").write_bytes(b"shard")
    (temp / ".metadata").write_bytes(b"meta")
    with pytest.raises(RuntimeError, match="died here"):
        saver._commit(temp, saver.save_dir / "iter_0000004", 4)
    assert (saver.save_dir / "latest_checkpointed_iteration.txt").read_text() == "4"
    assert ("committed", 4) in probe.calls


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "aside"])
def test_saving_an_existing_iteration_again_never_leaves_it_missing(tmp_path, monkeypatch, exchange):
    import ctypes
    import os
    from pathlib import Path

    from chaos.workloads.gpt3 import checkpoint

    final, temp = tmp_path / "iter_0000008", tmp_path / ".tmp.iter_0000008"
    final.mkdir()
    (final / "data").write_text("old")
    temp.mkdir()
    (temp / "data").write_text("new")
    new_inode = temp.stat().st_ino
    removed: list[str] = []
    real_rmtree = checkpoint.shutil.rmtree

    def rmtree(path, *args, **kwargs):
        # deleting the committed path itself leaves it missing until the rename: a kill there loses it
        assert Path(path) != final, "the committed directory was deleted before the new one was in place"
        removed.append(Path(path).name)
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(checkpoint.shutil, "rmtree", rmtree)
    if not exchange:
        class NoExchange:  # a libc or filesystem without renameat2's exchange
            def __init__(self, *args, **kwargs):
                pass

            def renameat2(self, *args):
                return -1

        monkeypatch.setattr(ctypes, "CDLL", NoExchange)
    checkpoint._install_directory(temp, final)
    assert (final / "data").read_text() == "new" and final.stat().st_ino == new_inode
    assert not temp.exists() and sorted(os.listdir(tmp_path)) == ["iter_0000008"]


@pytest.mark.parametrize("manifest", ['{"files": [1, 2]}', '{"files": {"a": {"size": "x"}}}', "[]", '{"nofiles": 1}',
                                      '{"files": {"a": 3}}'])
def test_a_malformed_manifest_is_an_answer_not_an_exception(tmp_path, manifest):
    """Rank 0 verifies and broadcasts the answer: an exception there would hang every other rank."""
    from chaos.workloads.gpt3.checkpoint import MANIFEST, verify_manifest

    (tmp_path / MANIFEST).write_text(manifest)
    assert verify_manifest(tmp_path).startswith("unreadable manifest")


def test_cpu_ranks_import_megatron_without_the_compiler_and_leave_torch_compile_alone():
    """chaos.workloads.gpt3.imports with CHAOS_MEGATRON_COMPILE=off (what the workload sets on CPU): megatron-core
    and the trainer are imported, torch's compiler is not, megatron's jit_fuser is the no-op, and torch.compile is
    torch's own again afterwards, and the garbage collector (off while importing) is on again. Without the switch, megatron-core's import pulls the compiler in."""
    import os
    import subprocess
    import sys

    code = ("import gc, sys, torch; real = torch.compile; import chaos.workloads.gpt3.imports; import megatron.core.jit as j; "
            "print('chaos.workloads.gpt3.train' in sys.modules, 'torch._inductor.compile_fx' in sys.modules, "
            "j.jit_fuser is j.noop_decorator, torch.compile is real, gc.isenabled())")

    def run(value):
        env = {**os.environ, "CHAOS_MEGATRON_COMPILE": value}
        return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                              check=True).stdout.split()
    assert run("off") == ["True", "False", "True", "True", "True"]
    assert run("on")[:2] == ["True", "True"]
