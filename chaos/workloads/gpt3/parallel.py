"""Process groups: torch.distributed from the torchrun environment, megatron-core parallel_state for TP,
and one 2-D DeviceMesh ("tp", "dp") that both FSDP2 (its "dp" dimension) and the TP-correct checkpoint
DTensors use. Ranks are laid out like megatron's default order: TP ranks are consecutive."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh

from chaos.workloads.gpt3.config import GPT3Config


@dataclass(frozen=True)
class ParallelDims:
    rank: int
    world_size: int
    tp: int
    dp: int
    tp_rank: int
    dp_rank: int
    device: torch.device
    mesh: DeviceMesh
    """Mesh dims ("tp", "dp"): mesh[t][d] = d * tp + t, so TP groups are consecutive ranks like megatron's."""

    @property
    def dp_mesh(self) -> DeviceMesh:
        return self.mesh["dp"]

    @property
    def dp_group(self):
        return self.mesh.get_group("dp")


def init(config: GPT3Config, store: dist.Store | None = None) -> ParallelDims:
    """The process groups; from the torchrun environment (env://: rank 0 hosts a store on MASTER_PORT), or on
    `store` where the job keeps one store for all its entries (in-process restart: chaos.workloads.gpt3.inprocess)."""
    rank = int(os.environ["RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    if world_size != config.world_size:
        raise RuntimeError(f"WORLD_SIZE={world_size} but the workload config says world_size={config.world_size}")
    if config.device == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    # A dead peer must not leave the others blocked forever; the supervisor tears them down long before.
    if store is None:
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=10))
    else:
        dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world_size,
                                timeout=timedelta(minutes=10))
    from megatron.core import parallel_state

    parallel_state.initialize_model_parallel(tensor_model_parallel_size=config.tensor_parallel)
    tp, dp = config.tensor_parallel, world_size // config.tensor_parallel
    layout = torch.arange(world_size).reshape(dp, tp).t().contiguous()
    mesh = DeviceMesh(device.type, layout, mesh_dim_names=("tp", "dp"))
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    dp_rank = parallel_state.get_data_parallel_rank()
    assert mesh.get_local_rank("tp") == tp_rank and mesh.get_local_rank("dp") == dp_rank, (
        "device mesh and megatron parallel_state disagree on the rank layout"
    )
    return ParallelDims(rank, world_size, tp, dp, tp_rank, dp_rank, device, mesh)


def bound_collectives(timeout: timedelta) -> None:
    """Every process group made so far fails a collective that waits longer than `timeout`. For in-process
    restart on gloo, which nothing can abort: a collective blocked on a stopped or vanished peer would
    otherwise hold this rank past the wrapper's hang detection, and the wrapper's restart with it."""
    for group in list(dist.distributed_c10d._world.pg_map):
        group.set_timeout(timeout)


def forget_model_parallel() -> None:
    """megatron-core's process-group globals of an entry that failed: torch's groups were already aborted (an
    in-process restart destroys them all), and initialize_model_parallel refuses to run while these are set."""
    from megatron.core import parallel_state

    parallel_state.destroy_model_parallel()


def shutdown() -> None:
    if dist.is_initialized():
        try:
            from megatron.core import parallel_state

            parallel_state.destroy_model_parallel()
        finally:
            dist.destroy_process_group()
