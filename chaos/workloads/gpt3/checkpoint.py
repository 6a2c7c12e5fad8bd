"""DTensor checkpoints through torch.distributed.checkpoint (DCP): TP-correct, crash-safe, resumable
with another data-parallel size.

TP-correct (trap 1 in the README): FSDP2 over the "dp" mesh makes every parameter a DTensor whose
*global* shape is the TP-local shape, so TP rank 0 and TP rank 1 would save the same keys with different
data and DCP would silently keep one. We save each tensor as a 2-D DTensor on the ("tp", "dp") mesh
instead: Shard(partition_dim) over tp, then FSDP's Shard(0) over dp (DTensor applies placements in mesh
order, so dp subdivides each TP shard — exactly FSDP's layout of a TP-local parameter). The local tensor
is the parameter's own storage, so a load writes straight into the live parameters and moments, and a
different dp size reshards by global offsets for free.

Crash-safe commit (unlike Megatron's plain tracker write): every rank writes into `.tmp.iter_%07d`;
DCP's coordinator writes `.metadata` only after all ranks' shards are gathered; rank 0 then writes a
manifest (size + sha256 of every file), fsyncs, renames the directory to `iter_%07d`, fsyncs the parent,
and only then replaces `latest_checkpointed_iteration.txt` atomically (temp + fsync + rename). The tracker
is the commit point: a kill anywhere before it leaves the previous checkpoint as the latest; a stale temp
directory is removed by the next save and is never loaded. Loading verifies the manifest and falls back
to the previous committed checkpoint when it does not match (and says so in the history).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import queue
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.futures import Future
from torch.distributed.checkpoint.filesystem import DEFAULT_SUFFIX, FileSystemWriter, _split_by_size_and_type
from torch.distributed.tensor import DTensor, Replicate, Shard

from chaos.probe import Probe
from chaos.workloads.gpt3 import rng
from chaos.workloads.gpt3.config import GPT3Config
from chaos.workloads.gpt3.model import TPLayout, plain_name
from chaos.workloads.gpt3.parallel import ParallelDims

TRACKER = "latest_checkpointed_iteration.txt"
MANIFEST = "chaos_manifest.json"
TEMP_PREFIX = ".tmp."


def iteration_dir_name(iteration: int) -> str:
    return f"iter_{iteration:07d}"


@dataclass
class TrainProgress:
    iteration: int = 0
    consumed_samples: int = 0


# ---- the state dict ------------------------------------------------------------------------------
def _contiguous_stride(shape: list[int]) -> tuple[int, ...]:
    stride, running = [], 1
    for size in reversed(shape):
        stride.append(running)
        running *= size
    return tuple(reversed(stride))


def _tp_global(local: torch.Tensor, sharded_param: DTensor, layout: TPLayout, dims: ParallelDims) -> DTensor:
    """View `local` (this rank's dp shard of a TP-local tensor) as a DTensor of the TP-global tensor."""
    shape = list(sharded_param.shape)
    if layout.partition_dim is not None:
        shape[layout.partition_dim] *= dims.tp
        tp_placement = Shard(layout.partition_dim)
    else:
        tp_placement = Replicate()
    return DTensor.from_local(
        local, dims.mesh, (tp_placement, Shard(0)), run_check=False,
        shape=torch.Size(shape), stride=_contiguous_stride(shape),
    )


def _as_checkpoint_tensor(tensor: DTensor, param: DTensor, layout: TPLayout, dims: ParallelDims, config: GPT3Config):
    if tensor.device_mesh.ndim == 2:
        # Megatron-FSDP (given tp_dim) already makes TP-global DTensors on the ("tp", "dp") mesh.
        return tensor
    if config.has_bug("swap_tp_shards"):
        # TRAP 1 reproduced on purpose: save FSDP's dp-only DTensor as is; TP ranks then collide.
        return tensor
    return _tp_global(tensor.to_local(), param, layout, dims)


def init_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """AdamW creates its moments on the first step; a load needs them to exist to load into."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state[param]
            if not state:
                state["step"] = torch.tensor(0.0, dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)


def build_state_dict(model, optimizer, scheduler, layouts: dict[str, TPLayout], dims: ParallelDims,
                     config: GPT3Config, progress: TrainProgress) -> dict[str, Any]:
    state: dict[str, Any] = {}
    params = {plain_name(name): param for name, param in model.named_parameters()}
    with torch.no_grad():
        for name, param in params.items():
            state[f"model/{name}"] = _as_checkpoint_tensor(param, param, layouts[name], dims, config)
        if not config.has_bug("no_optimizer_state"):
            init_optimizer_state(optimizer)
            for name, param in params.items():
                moments = optimizer.state[param]
                state[f"optim/{name}/exp_avg"] = _as_checkpoint_tensor(moments["exp_avg"], param, layouts[name], dims, config)
                state[f"optim/{name}/exp_avg_sq"] = _as_checkpoint_tensor(moments["exp_avg_sq"], param, layouts[name], dims, config)
                state[f"optim/{name}/step"] = moments["step"]
            _agree_on_adam_steps([optimizer.state[param]["step"] for param in params.values()], dims)
    # Non-tensor state is pickled into bytes: DCP stores it whole (no flattening surprises).
    state["train"] = pickle.dumps({
        "iteration": progress.iteration,
        "consumed_samples": progress.consumed_samples,
        "scheduler": scheduler.state_dict(),
    })
    state[f"rng/rank_{dims.rank}"] = pickle.dumps(rng.capture())
    if config.fsdp == "megatron":
        _describe_uneven_shards(state)
    return state


def _agree_on_adam_steps(steps: list[torch.Tensor], dims: ParallelDims) -> None:
    """Adam's step count is a plain tensor per parameter: DCP saves one rank's copy and loads it into every
    rank. With Megatron-FSDP's uneven shards a rank whose shard of a parameter is empty gets no gradient,
    so AdamW never steps it and its count stays 0 (seen on GPU: 136 parameters at TP2xDP2). Had DCP kept
    that copy, every rank would resume with step 0 and restart Adam's bias correction. Every stepped copy
    holds the same count, so the max over ranks is the true one (a no-op where all ranks step)."""
    if not steps:
        return
    counts = torch.stack([step.detach().reshape(()).to(torch.float64) for step in steps]).to(dims.device)
    dist.all_reduce(counts, op=dist.ReduceOp.MAX)
    for step, count in zip(steps, counts.cpu()):
        step.copy_(count)


def _describe_uneven_shards(state: dict[str, Any]) -> None:
    """Megatron-FSDP shards flat buffers, so a parameter's dp shards are uneven row ranges that DTensor's
    even-split arithmetic places wrongly: DCP would save and load rows at the wrong offsets (a TP2xDP2
    resume drifted 6%). Megatron's own state_dict hooks attach each local chunk's real offset; this dict
    is built by hand, so attach them here (a collective: every rank, same order)."""
    from megatron.core.distributed.fsdp.src.megatron_fsdp.uneven_dtensor import (
        preprocess_state_dict_for_uneven_dtensor,
    )

    preprocess_state_dict_for_uneven_dtensor({key: value for key, value in state.items() if isinstance(value, DTensor)})


# ---- writing ----------------------------------------------------------------------------------------
class ProbedFileSystemWriter(FileSystemWriter):
    """DCP's file writer, writing this rank's shard files one at a time with a probe point after each,
    and a probe point on the coordinator before `.metadata` is written: the places a kill is planned."""

    def __init__(self, path: Path, probe: Probe, step: int, shard_files: int) -> None:
        super().__init__(path, single_file_per_rank=True, sync_files=True, thread_count=1, overwrite=True)
        self._probe = probe
        self._step = step
        self._shard_files = shard_files

    def write_data(self, plan, planner) -> Future:
        prefix = plan.storage_data.prefix
        results = []
        for number, bucket in enumerate(_split_by_size_and_type(self._shard_files, plan.items), start=1):
            file_name = f"{prefix}{number - 1}{DEFAULT_SUFFIX}"
            file_queue: queue.Queue = queue.Queue()
            file_queue.put((self.fs.concat_path(self.path, file_name), file_name, bucket))
            results += self._write_data(planner, file_queue).wait()
            self._probe.point("checkpoint.shard", self._step, index=number)
        future: Future = Future()
        future.set_result(results)
        return future

    def finish(self, metadata, results) -> None:
        self._probe.point("checkpoint.metadata", self._step)
        super().finish(metadata, results)

    def stage(self, state_dict):
        """Async save plans on a CPU copy: carry over the chunk offsets of Megatron-FSDP's uneven shards
        (_describe_uneven_shards), which live on the original local tensors only."""
        staged = super().stage(state_dict)
        for key, value in state_dict.items():
            original = getattr(value, "_local_tensor", None)
            copy = getattr(staged.get(key), "_local_tensor", None) if isinstance(staged, dict) else None
            if original is None or copy is None:
                continue
            for attribute in ("__create_chunk_list__", "__create_write_items__"):
                if hasattr(original, attribute):
                    setattr(copy, attribute, getattr(original, attribute))
        return staged


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _install_directory(temp: Path, final: Path) -> None:
    """Puts `temp` in place as `final`. When `final` exists (an earlier attempt renamed this iteration in,
    or it is being saved again), the two are swapped in one step (renameat2 RENAME_EXCHANGE) and the old
    one removed after: at no moment is there no `final` (deleting it first would leave the tracker naming a
    missing directory if the rank died in between). Where the exchange is not supported, the old directory is
    renamed aside first, which leaves `final` missing for one rename, never deleted."""
    if not final.exists():
        os.rename(temp, final)
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    exchanged = libc.renameat2(_AT_FDCWD, os.fsencode(temp), _AT_FDCWD, os.fsencode(final), _RENAME_EXCHANGE) == 0
    if exchanged:
        shutil.rmtree(temp)  # now holds the old directory
        return
    aside = final.with_name(f"{TEMP_PREFIX}old.{final.name}")
    shutil.rmtree(aside, ignore_errors=True)
    os.rename(final, aside)
    os.rename(temp, final)
    shutil.rmtree(aside)


def _write_atomically(path: Path, text: str) -> None:
    temp = path.with_name(path.name + ".tmp")
    with open(temp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)
    _fsync_dir(path.parent)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(directory: Path, iteration: int) -> None:
    files = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file() and path.name != MANIFEST:
            files[str(path.relative_to(directory))] = {"size": path.stat().st_size, "sha256": _sha256(path)}
    _write_atomically(directory / MANIFEST, json.dumps({"iteration": iteration, "files": files}, indent=1))


def verify_manifest(directory: Path) -> str | None:
    """None when every file is there with its committed size and hash; else what is wrong."""
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        return f"no {MANIFEST} (never committed)"
    try:
        manifest = json.loads(manifest_path.read_text())
        files = {str(name): (int(entry["size"]), str(entry["sha256"])) for name, entry in manifest["files"].items()}
    except (ValueError, OSError, KeyError, TypeError, AttributeError) as error:
        # Any malformation is an answer, never an exception: rank 0 broadcasts this answer to every rank,
        # and raising here instead would leave the others waiting in the broadcast forever.
        return f"unreadable manifest: {type(error).__name__}: {error}"
    for name, (size, digest) in files.items():
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, committed {size}"
        if _sha256(path) != digest:
            return f"{name} does not match its committed sha256"
    return None


def read_tracker(save_dir: Path) -> int | None:
    path = Path(save_dir) / TRACKER
    if not path.is_file():
        return None
    text = path.read_text().strip()
    return int(text) if text.isdigit() else None


class Checkpointer:
    """save() / load() for one rank; every call is collective over all ranks."""

    def __init__(self, config: GPT3Config, dims: ParallelDims, probe: Probe) -> None:
        self.config = config
        self.dims = dims
        self.probe = probe
        self.save_dir = Path(config.save_dir)
        self.load_dir = Path(config.load_dir or config.save_dir)
        self._pending: tuple[Future, Path, Path, int] | None = None  # async save in flight

    # ---- save ---------------------------------------------------------------------------------------
    def save(self, state: dict[str, Any], iteration: int) -> None:
        self.finalize_async(wait=True)
        probe, step = self.probe, iteration
        probe.point("checkpoint.begin", step)
        final = self.save_dir / iteration_dir_name(iteration)
        temp = self.save_dir / f"{TEMP_PREFIX}{iteration_dir_name(iteration)}"
        if self.dims.rank == 0:
            self.save_dir.mkdir(parents=True, exist_ok=True)
            self._remove_stale_temps()
            if self.config.has_bug("tracker_before_shards"):
                # Megatron-style non-atomic save, and worse: the tracker first, then the shards.
                _write_atomically(self.save_dir / TRACKER, str(iteration))
        dist.barrier()
        target = final if self.config.has_bug("tracker_before_shards") else temp
        writer = ProbedFileSystemWriter(target, probe, step, self.config.shard_files_per_rank)
        if self.config.async_save:
            future = dcp.async_save(state, storage_writer=writer, process_group=self._async_group())
            self._pending = (future, temp, final, iteration)
            return
        dcp.save(state, storage_writer=writer)
        self._commit(temp, final, iteration)

    def finalize_async(self, wait: bool) -> None:
        """Commits an async save once every rank's write finished (a collective: call on all ranks)."""
        if self._pending is None:
            return
        future, temp, final, iteration = self._pending
        if wait:
            future.result()
        done = torch.tensor([1 if future.done() else 0], dtype=torch.int32)
        dist.all_reduce(done, op=dist.ReduceOp.MIN, group=self._async_group())
        if not done.item():
            return
        future.result()  # re-raise a failed background save here, on the training thread
        self._pending = None
        self._commit(temp, final, iteration)

    def _async_group(self):
        # Background DCP collectives get their own gloo group, so they never interleave with training's.
        if not hasattr(self, "_group"):
            self._group = dist.new_group(backend="gloo")
        return self._group

    def _commit(self, temp: Path, final: Path, iteration: int) -> None:
        probe = self.probe
        committing = self.dims.rank == 0 and not self.config.has_bug("tracker_before_shards")
        if committing:
            if not probe.owns_run_dir():
                raise RuntimeError(f"chaos: the run directory {self.save_dir.parent} now belongs to another run; "
                                   f"this rank of an earlier run does not commit iteration {iteration} into it")
            write_manifest(temp, iteration)
            probe.point("checkpoint.commit", iteration)
            _install_directory(temp, final)
            _fsync_dir(self.save_dir)
            probe.point("checkpoint.tracker", iteration)
            _write_atomically(self.save_dir / TRACKER, str(iteration))
            # Committed the moment the tracker names it: recorded now, not after the barrier, so a rank 0
            # killed in between does not leave a committed checkpoint without its record.
            probe.checkpoint_committed(iteration, str(final))
            self._apply_retention(iteration)
        dist.barrier()
        if not committing:
            probe.checkpoint_committed(iteration, str(final))

    def _remove_stale_temps(self) -> None:
        for entry in self.save_dir.iterdir():
            if entry.name.startswith(TEMP_PREFIX) and entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)

    def _apply_retention(self, newest: int) -> None:
        if self.config.keep_last <= 0:
            return
        committed = sorted(self._iteration_dirs(self.save_dir), reverse=True)
        for iteration in committed[self.config.keep_last:]:
            if iteration < newest:
                shutil.rmtree(self.save_dir / iteration_dir_name(iteration), ignore_errors=True)

    @staticmethod
    def _iteration_dirs(directory: Path) -> list[int]:
        if not directory.is_dir():
            return []
        found = []
        for entry in directory.iterdir():
            if entry.is_dir() and entry.name.startswith("iter_") and entry.name[5:].isdigit():
                found.append(int(entry.name[5:]))
        return found

    # ---- load ---------------------------------------------------------------------------------------
    def candidates(self) -> list[int]:
        """Iterations to try, newest first: the tracker's, then older committed ones."""
        directory = self.load_dir
        if self.config.has_bug("load_partial"):
            return sorted(self._iteration_dirs(directory), reverse=True)[:1]
        latest = read_tracker(directory)
        if latest is None:
            return []
        older = sorted((i for i in self._iteration_dirs(directory) if i < latest), reverse=True)
        if self.config.has_bug("load_previous") and older:
            # Deliberately wrong: pass over the checkpoint the tracker names and resume from the one before.
            return older
        return [latest] + older

    def load(self, model, optimizer, scheduler, layouts, progress: TrainProgress) -> TrainProgress:
        """Loads the newest intact committed checkpoint in place; returns where training resumes."""
        probe = self.probe
        for iteration in self.candidates():
            path = self.load_dir / iteration_dir_name(iteration)
            problem = self._check(path)
            if problem is not None:
                probe.checkpoint_rejected(iteration, str(path), problem)
                if self.config.has_bug("no_fallback"):
                    raise RuntimeError(f"no_fallback: iteration {iteration} failed verification: {problem}")
                continue
            probe.point("checkpoint.load", iteration)
            if self.config.has_bug("crash_on_resume"):
                # A trainer that cannot load its own checkpoint (as Megatron-LM's distributed optimizer with the
                # torch_dist format and torch's Adam fails `assert len(steps) == 1`): every restart dies here.
                raise AssertionError(f"crash_on_resume: cannot load iteration {iteration}")
            state = build_state_dict(model, optimizer, scheduler, layouts, self.dims, self.config, progress)
            rng_key = f"rng/rank_{self.dims.rank}"
            available = set(dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata)
            if rng_key not in available:
                # A different world size: this rank has no saved RNG stream (resharded resume).
                del state[rng_key]
            dcp.load(state, checkpoint_id=str(path))
            train = pickle.loads(state["train"])
            if not self.config.has_bug("no_scheduler_restore"):
                scheduler.load_state_dict(train["scheduler"])
            if self.config.has_bug("zero_moments_on_load"):
                for moments in optimizer.state.values():
                    for name in ("exp_avg", "exp_avg_sq"):
                        if name in moments:
                            moments[name].zero_()
            if rng_key in state and not self.config.has_bug("no_rng_restore"):
                rng.restore(pickle.loads(state[rng_key]))
            resumed = TrainProgress(iteration=train["iteration"], consumed_samples=train["consumed_samples"])
            if self.config.has_bug("no_data_position"):
                resumed.consumed_samples = 0
            if self.config.has_bug("skip_step_on_resume"):
                resumed.iteration += 1
                resumed.consumed_samples += self.config.global_batch_size
            probe.checkpoint_loaded(resumed.iteration, str(path))
            return resumed
        probe.checkpoint_loaded(0, None)
        return progress

    def _check(self, path: Path) -> str | None:
        """Rank 0 verifies the manifest; every rank gets the same answer (one bad reader must not split them)."""
        if self.config.has_bug("tracker_before_shards") or self.config.has_bug("load_partial"):
            return None  # the buggy trainers trust whatever they find
        problem = verify_manifest(path) if self.dims.rank == 0 else None
        box = [problem]
        dist.broadcast_object_list(box, src=0)
        return box[0]
