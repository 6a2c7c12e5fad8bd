"""The systems under test. The supervisor sees a workload only through LaunchSpec: a command, a world size,
where its checkpoints go. No torch here: rank-side code lives in the workload's own modules."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping



@dataclass(frozen=True)
class LaunchSpec:
    """How to start one attempt of a workload."""

    argv: tuple[str, ...]
    """The per-rank command (torchrun runs it as its entry point; the direct launcher runs it per rank)."""
    world_size: int
    nodes: int
    """Simulated hosts: ranks are split evenly; a `node` target kills all ranks of one."""
    checkpoint_dir: Path
    train_iters: int
    save_interval: int
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def ranks_per_node(self) -> int:
        return self.world_size // self.nodes


def launch_spec(config: Any, run_dir: Path) -> tuple[Any, LaunchSpec]:
    """Points a validated workload config at run_dir (checkpoints live inside it) and says how to start it."""
    from chaos.workloads.gpt3.config import GPT3Config

    if not isinstance(config, GPT3Config):
        raise TypeError(f"unsupported workload config {type(config).__name__}")
    config = config.with_run_dir(run_dir)
    config_path = Path(run_dir) / "workload.yaml"
    config.write_yaml(config_path)
    argv = (sys.executable, "-m", "chaos.workloads.gpt3", str(config_path))
    return config, LaunchSpec(
        argv=argv,
        world_size=config.world_size,
        nodes=config.nodes,
        checkpoint_dir=Path(config.save_dir),
        train_iters=config.train_iters,
        save_interval=config.save_interval,
        env={"OMP_NUM_THREADS": "1"} if config.device == "cpu" else {},
    )
