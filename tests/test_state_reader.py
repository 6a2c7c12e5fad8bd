"""chaos.state reads checkpoints from outside, torch-free: real Megatron-LM checkpoints in every --ckpt-format
(tests/fixtures/megatron_lm/checkpoints, made by scripts/megatron_checkpoint_fixtures.sh on a GPU), checked
against torch's own loading; damaged, hostile and unsupported checkpoints are findings, never tracebacks, and
nothing in a checkpoint ever runs."""

from __future__ import annotations

import math
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from chaos.state.checkpoint import UnsupportedCheckpoint, open_checkpoint
from chaos.state.entries import category_of, describe
from chaos.state.files import CheckpointDamage
from chaos.state.fingerprint import read_state
from chaos.state.unpickle import Opaque, safe_loads

FIXTURES = Path(__file__).parent / "fixtures" / "megatron_lm" / "checkpoints"
FORMATS = ("fsdp_dtensor", "torch_dist", "torch_dist_distopt", "torch")


def fixture(fmt: str) -> Path:
    return FIXTURES / fmt / "iter_0000004"


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_megatron_format_reads_with_its_progress_scheduler_rng_optimizer_and_model(fmt):
    """A Megatron-LM checkpoint of iteration 4 (4 x 4 samples), read on CPU without a process group: every
    category of state a resume must restore is found, with Megatron's own values."""
    fingerprint = read_state(fixture(fmt)).fingerprint
    by_category: dict[str, list[str]] = {}
    for key, entry in fingerprint.entries.items():
        by_category.setdefault(entry.category, []).append(key)
    assert set(by_category) >= {"progress", "scheduler", "rng", "optimizer", "model", "configuration"}
    progress = {key.rsplit(".", 1)[-1]: fingerprint.entries[key].value for key in by_category["progress"]}
    assert progress["iteration"] == 4 and progress["consumed_train_samples"] == 16
    scheduler = {key.rsplit(".", 1)[-1]: fingerprint.entries[key].value for key in by_category["scheduler"]}
    assert scheduler["num_steps"] == 16  # Megatron's scheduler counts samples
    assert any("cuda_rng_state" in key for key in by_category["rng"])
    assert any("exp_avg_sq" in key for key in by_category["optimizer"])
    weights = [key for key in by_category["model"] if "linear_fc1.weight" in key]
    assert weights and all(fingerprint.entries[k].norm > 0 for k in weights)


def test_the_distributed_optimizers_nan_padding_is_counted_not_summed():
    """Megatron's distributed optimizer pads its flat buffers with NaN: the norm covers the finite elements and
    the non-finite count says how many were not."""
    entries = read_state(fixture("torch_dist_distopt")).fingerprint.entries
    buckets = [e for k, e in entries.items() if k.endswith(".exp_avg") and "bucket" in k]
    assert buckets and all(e.nonfinite > 0 and math.isfinite(e.norm) and e.norm > 0 for e in buckets)


@pytest.mark.parametrize("fmt", ["fsdp_dtensor", "torch_dist", "torch_dist_distopt"])
def test_dcp_fingerprints_agree_with_torchs_own_loading(fmt):
    """Every tensor's norm equals what torch.distributed.checkpoint itself loads (float64 L2)."""
    torch = pytest.importorskip("torch")
    import torch.distributed.checkpoint as dcp

    directory = fixture(fmt)
    entries = read_state(directory).fingerprint.entries
    metadata = dcp.FileSystemReader(str(directory)).read_metadata()
    state = {key: torch.zeros(tuple(meta.size), dtype=meta.properties.dtype)
             for key, meta in metadata.state_dict_metadata.items() if hasattr(meta, "size")}
    dcp.load(state, checkpoint_id=str(directory), no_dist=True)
    assert state
    for key, tensor in state.items():
        values = tensor.double()
        expected = float(torch.linalg.vector_norm(torch.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)))
        assert math.isclose(entries[key].norm, expected, rel_tol=1e-12, abs_tol=1e-300), key
        assert entries[key].nonfinite == int((~torch.isfinite(values)).sum()), key


def test_legacy_torch_format_fingerprints_agree_with_torch_load(monkeypatch):
    """Megatron's legacy format is one torch.save archive: its tensors read like torch.load's (the archive names
    classes of a newer Megatron; torch is given stand-ins for them, chaos needs none)."""
    torch = pytest.importorskip("torch")
    import megatron.core.transformer.enums as enums

    class Anything:
        def __init__(self, *args, **kwargs):
            pass

        def __setstate__(self, state):
            pass

    for name in ("InferenceCudaGraphScope", "AttnBackend"):
        monkeypatch.setattr(enums, name, Anything, raising=False)
    path = fixture("torch") / "mp_rank_00" / "model_optim_rng.pt"
    loaded = torch.load(path, map_location="cpu", weights_only=False)
    entries = read_state(fixture("torch")).fingerprint.entries

    def tensors(value, key):
        if isinstance(value, torch.Tensor):
            yield key, value
        elif isinstance(value, dict):
            for name, child in value.items():
                yield from tensors(child, f"{key}.{name}")
        elif isinstance(value, (list, tuple)):
            for index, child in enumerate(value):
                yield from tensors(child, f"{key}.{index}")

    found = list(tensors(loaded, "mp_rank_00"))
    assert len(found) > 20
    for key, tensor in found:
        assert math.isclose(entries[key].norm, float(torch.linalg.vector_norm(tensor.double())), rel_tol=1e-12), key


def test_two_uninterrupted_runs_distance_zero_and_a_changed_tensor_named(tmp_path):
    """Reading a checkpoint against a copy: every entry at distance 0; after one element of one tensor is
    changed in the copy's bytes, exactly that tensor is at a distance, and the others stay at 0."""
    source = fixture("fsdp_dtensor")
    copy = tmp_path / "iter_0000004"
    shutil.copytree(source, copy)
    same = read_state(source, [copy]).spreads
    assert same and all(d == [0.0] for d in same.values())
    with open_checkpoint(copy) as checkpoint:
        item = next(i for i in checkpoint.items if getattr(i, "key", "") ==
                    "model.module.decoder.layers.0.mlp.linear_fc1.weight")
        head = next(iter(item.chunks[0].blocks()))[:64]
    shard = copy / "__0_0.distcp"
    data = bytearray(shard.read_bytes())
    at = data.find(head)
    assert at > 0 and data.find(head, at + 1) == -1  # the tensor's first elements, found once in the file
    data[at + 2] ^= 0x40  # the exponent bits of its first element
    shard.write_bytes(bytes(data))
    spreads = read_state(source, [copy]).spreads
    changed = {k: d[0] for k, d in spreads.items() if d != [0.0]}
    assert list(changed) == ["model.module.decoder.layers.0.mlp.linear_fc1.weight"]
    assert 0 < changed["model.module.decoder.layers.0.mlp.linear_fc1.weight"] < math.inf


def test_describe_names_state_as_a_person_does():
    key = "optimizer.state.module.module.module.decoder.layers.3.mlp.linear_fc1.weight.exp_avg"
    assert describe(key) == "optimizer exp_avg of decoder.layers.3.mlp.linear_fc1.weight"
    assert describe("optimizer.state.exp_avg_sq.decoder.layers.mlp.linear_fc2.weight") == \
        "optimizer exp_avg_sq of decoder.layers.mlp.linear_fc2.weight"
    assert describe("model/embedding.word_embeddings.weight") == "parameter embedding.word_embeddings.weight"
    assert category_of("common_state/shard_0_1.0.args.iteration", "value") == "configuration"  # where it started
    assert category_of("common_state/shard_0_1.0.args.consumed_train_samples", "value") == "progress"
    assert category_of("train.scheduler.num_steps", "value") == "scheduler"
    assert category_of("rng/rank_3.tracker.model-parallel-rng", "tensor") == "rng"


# ---- damage and hostility --------------------------------------------------------------------------------
def test_a_truncated_shard_file_is_damage_naming_the_file_and_the_range(tmp_path):
    copy = tmp_path / "iter_0000004"
    shutil.copytree(fixture("torch_dist"), copy)
    shard = copy / "__0_0.distcp"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(CheckpointDamage) as caught:
        read_state(copy)
    assert "__0_0.distcp" in str(caught.value) and "truncated" in str(caught.value)


def test_garbage_metadata_is_damage_not_a_traceback(tmp_path):
    copy = tmp_path / "iter_0000004"
    shutil.copytree(fixture("fsdp_dtensor"), copy)
    (copy / ".metadata").write_bytes(b"\x80\x04not a pickle at all")
    with pytest.raises(CheckpointDamage) as caught:
        read_state(copy)
    assert ".metadata" in str(caught.value)


def test_a_shard_that_is_a_symlink_or_a_fifo_is_refused_never_followed(tmp_path):
    """A checkpoint is untrusted input: a shard pointing elsewhere is not read through (chaos may run as
    root), and a FIFO under a shard's name does not block the reader."""
    for kind in ("symlink", "fifo"):
        copy = tmp_path / kind / "iter_0000004"
        shutil.copytree(fixture("fsdp_dtensor"), copy)
        shard = copy / "__0_0.distcp"
        secret = tmp_path / f"{kind}-secret"
        secret.write_bytes(shard.read_bytes())
        shard.unlink()
        if kind == "symlink":
            shard.symlink_to(secret)
        else:
            os.mkfifo(shard)
        with pytest.raises(CheckpointDamage) as caught:
            read_state(copy)
        assert "__0_0.distcp" in str(caught.value)
        assert ("symbolic link" in str(caught.value)) if kind == "symlink" else ("not a regular file" in str(caught.value))


def test_a_storage_path_outside_the_checkpoint_is_refused(tmp_path):
    """DCP's metadata names each record's file: '../elsewhere' or an absolute path is refused, not opened."""
    from chaos.state.files import open_inside

    for relative in ("../outside.distcp", "/etc/passwd", "a/../../b", ""):
        with pytest.raises(CheckpointDamage):
            open_inside(tmp_path, relative)


def test_a_pickle_that_would_run_a_command_is_read_as_a_record_and_runs_nothing(tmp_path):
    """What Python's pickle (and torch.load(weights_only=False)) would execute, chaos records instead."""
    marker = tmp_path / "ran"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    class Nested:
        def __reduce__(self):
            return (subprocess.call, (["touch", str(marker)],))

    value = safe_loads(pickle.dumps({"a": Exploit(), "b": [Nested()], "c": 3}))
    assert not marker.exists()
    assert isinstance(value["a"], Opaque) and value["a"].global_name in ("posix.system", "os.system")
    assert value["a"].args == (f"touch {marker}",) and value["c"] == 3


def test_a_hostile_metadata_pickle_is_damage_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    copy = tmp_path / "iter_0000004"
    shutil.copytree(fixture("fsdp_dtensor"), copy)
    (copy / ".metadata").write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(CheckpointDamage):
        read_state(copy)
    assert not marker.exists()


def test_a_directory_in_no_known_form_is_unsupported(tmp_path):
    (tmp_path / "weights.safetensors").write_bytes(b"x")
    with pytest.raises(UnsupportedCheckpoint):
        read_state(tmp_path)


def test_the_reader_imports_no_torch():
    """chaos's own process never imports torch: the checks read checkpoints with numpy."""
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parents[1])!r})\n"
            "from chaos.state.fingerprint import read_state\n"
            f"read_state(__import__('pathlib').Path({str(fixture('torch_dist'))!r}))\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


# ---- the checks on real checkpoint bytes --------------------------------------------------------------------
def test_checkpoint_state_and_final_state_judge_real_checkpoints_and_report_damage(tmp_path):
    """A synthetic run whose committed checkpoints hold a real Megatron-LM checkpoint, against a golden holding
    that checkpoint's fingerprints: both checks pass; a truncated shard fails checkpoint_state with what is
    wrong, where and which attempt saved it; an entry that differs can be accepted, with its reason."""
    from chaos.checkers import run_check
    from chaos.golden import GoldenCheckpoint
    from chaos.state.entries import JUDGED
    from synthetic_runs import standard_run

    run = standard_run(tmp_path / "run")
    golden_entries = {k: e.to_dict() for k, e in read_state(fixture("fsdp_dtensor")).fingerprint.entries.items()
                      if e.category != "configuration"}
    iterations = sorted(int(p.name[5:]) for p in run.checkpoint_dir.glob("iter_*"))
    for iteration in iterations:
        directory = run.checkpoint_dir / f"iter_{iteration:07d}"
        shutil.rmtree(directory)
        shutil.copytree(fixture("fsdp_dtensor"), directory)
    golden = {i: GoldenCheckpoint(golden_entries) for i in (4, 8, 12)}
    ctx = lambda **kw: run.context(golden_checkpoints=golden, final_state_unavailable="prints no hash", **kw)  # noqa: E731
    state = run_check(ctx(), "checkpoint_state")
    assert state.status == "pass", state.detail
    assert state.evidence["compared_iterations"] == [4, 8, 12] and state.evidence["not_in_golden"] == [10]
    assert run_check(ctx(), "final_state").status == "pass"
    with open(run.checkpoint_dir / "iter_0000012" / "__0_0.distcp", "r+b") as handle:
        handle.truncate(1000)
    damaged = run_check(ctx(), "checkpoint_state")
    assert damaged.status == "fail" and "__0_0.distcp" in damaged.detail and "truncated" in damaged.detail
    assert "iteration 12 (the first checkpoint of attempt 3)" in damaged.detail
    assert run_check(ctx(), "final_state").status == "fail"
    # a golden whose iteration-8 counter says otherwise: that entry differs; accepted, it is reported, not failed
    key = next(k for k, e in golden_entries.items() if k == "iteration")
    golden[8] = GoldenCheckpoint({**golden_entries, key: {**golden_entries[key], "sha256": "0" * 32, "value": 8}})
    shutil.rmtree(run.checkpoint_dir / "iter_0000012")
    shutil.copytree(fixture("fsdp_dtensor"), run.checkpoint_dir / "iter_0000012")
    differs = run_check(ctx(), "checkpoint_state")
    assert differs.status == "fail" and differs.detail.startswith("iteration (iteration) differs (golden 8, actual 4)")
    accepted = run_check(ctx(accepted_state_differences={"iteration": "a test"}), "checkpoint_state")
    assert accepted.status == "pass" and "accepted by the scenario: iteration (iteration) (a test)" in accepted.detail
    assert "progress" in JUDGED
