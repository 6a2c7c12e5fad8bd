"""`kind: gpt3` (the default): chaos's own megatron-core GPT-3 trainer behind the workload seam.

Followed through the probe: faults land exactly where planned. Torch-free (the config and the tester-side
checkpoint layout only); the trainer itself runs in the ranks."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from chaos.errors import InputError
from chaos.probe import COORDINATOR_PHASES, MICROBATCH_PHASES, PHASES, SAVE_PHASES, STEP_PHASES
from chaos.workloads.base import InProcessRestarts, LaunchSpec, PhaseRules, WarmStart, WorkloadFacts
from chaos.workloads.gpt3.config import GPT3Config
from chaos.workloads.gpt3.layout import ManifestLayout

KIND = "gpt3"
ENV_MEGATRON_COMPILE = "CHAOS_MEGATRON_COMPILE"
"""`off`: megatron-core is imported without torch's compiler (chaos.workloads.gpt3.imports; torch-free here)."""
WARM_IMPORTS = ("chaos.workloads.gpt3.imports",)
"""What a rank imports before it works: torch, DCP, megatron-core, the trainer (chaos.workloads.gpt3.imports;
~3.5 s of CPU per rank here, ~5.7 s before megatron-core's import stopped pulling in torch's compiler)."""
TORCHRUN_STORE = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
"""Under torchrun the trainer's process group gets its own TCPStore, not the rendezvous's shared one: with the
shared store (torch's default) a worker group torchrun restarts reads the previous group's addresses from it
and fails to connect (docs/findings/torchrun-restart-shared-store.md); rank 0 hosting a fresh store at every
restart is torch's documented opt-out. Without torchrun restarts it changes nothing the job computes."""
CPU_PINS = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "COMPATIBLE", "CHAOS_CPU_ONEDNN": "off"}
"""The CPU decides a rank's kernels three ways, and each changes the losses in the 7th digit between machines:
torch's own kernels follow the CPU's instruction set (pinned to AVX2); MKL's matrix products follow it too,
and MKL honours a reproducible branch other than COMPATIBLE only on Intel CPUs (measured on AMD: MKL_CBWR=AVX2
runs as AUTO); oneDNN, which runs the MLP's GELU, picks its kernels by the CPU whatever the rest says (turned
off: torch's own GELU then runs, under the pinned capability). See cpu_compat and golden.PIN_REQUIRES."""
QUIET_STORE_POLLS = {"TORCH_CPP_LOG_LEVEL": "ERROR"}
"""In-process restart only: the wrapper polls its store with short waits, and at torch's default C++ log level
every poll that times out prints `[c10d] waitForInput ... timed out` (Megatron-LM warns unless this is set).
Read when torch loads, so it is given at the launch; a level already in the environment is kept."""


@dataclass(frozen=True)
class GPT3Workload:
    config: GPT3Config
    kind: str = KIND
    observation: str = "probe"
    final_state_unavailable: str | None = None

    @property
    def facts(self) -> WorkloadFacts:
        c = self.config
        return WorkloadFacts(world_size=c.world_size, nodes=c.nodes, train_iters=c.train_iters,
                             save_interval=c.save_interval, exit_on_sigterm=c.exit_on_sigterm, device=c.device,
                             keep_last=c.keep_last, cpu_pins=CPU_PINS if c.device == "cpu" else {},
                             node_local="checkpoint_storage" if c.checkpoint_storage == "node_local" else None,
                             in_process=self._in_process())

    def _in_process(self) -> InProcessRestarts | None:
        """NVRx's in-process restart (chaos.workloads.gpt3.inprocess), when the workload turns it on."""
        c = self.config
        if not c.inprocess_restarts:
            return None
        return InProcessRestarts("inprocess_restarts", c.inprocess_restarts, c.inprocess_soft_timeout_s,
                                 turned_on_by=f"inprocess_restarts: {c.inprocess_restarts}")

    @property
    def phases(self) -> PhaseRules:
        c = self.config
        limits = {"checkpoint.shard": (c.shard_files_per_rank, f"the k-th shard file; shard_files_per_rank="
                                                               f"{c.shard_files_per_rank}")}
        for phase in MICROBATCH_PHASES:
            limits[phase] = (c.num_microbatches, f"the micro-batch; num_microbatches={c.num_microbatches}")
        return PhaseRules(phases=PHASES, step_phases=STEP_PHASES, save_phases=SAVE_PHASES,
                          coordinator_phases=COORDINATOR_PHASES, index_limits=limits)

    @property
    def layout(self) -> ManifestLayout:
        return ManifestLayout()

    @property
    def golden_prefix(self) -> str:
        return self.config.preset

    @property
    def printed_formats(self) -> Mapping[str, str]:
        return {}  # the probe reports full-precision floats

    def launch(self, run_dir: Path) -> LaunchSpec:
        config = self.config.with_run_dir(run_dir)
        config_path = Path(run_dir) / "workload.yaml"
        config.write_yaml(config_path)
        quiet = QUIET_STORE_POLLS if config.inprocess_restarts and "TORCH_CPP_LOG_LEVEL" not in os.environ else {}
        return LaunchSpec(
            argv=(sys.executable, "-m", "chaos.workloads.gpt3", str(config_path)),
            world_size=config.world_size,
            nodes=config.nodes,
            checkpoint_dir=Path(config.save_dir),
            train_iters=config.train_iters,
            save_interval=config.save_interval,
            # the CPU trainer calls none of megatron-core's compiled kernels: skip importing the compiler
            env={**TORCHRUN_STORE, **quiet, **({"OMP_NUM_THREADS": "1", ENV_MEGATRON_COMPILE: "off", **CPU_PINS}
                                                if config.device == "cpu" else {})},
            # a warm spare imports what the ranks import before their first instruction of work
            warm=WarmStart(imports=WARM_IMPORTS, module="chaos.workloads.gpt3", args=(str(config_path),)),
            in_process=config.inprocess_restarts > 0,
        )

    def fingerprint_mapping(self) -> Mapping[str, Any]:
        return self.config.fingerprint_mapping()

    def scenario_mapping(self, as_written: Mapping[str, Any]) -> Mapping[str, Any]:
        return as_written  # preset + overrides: the shortest explicit form, and it holds no paths

    def describe(self) -> str:
        c = self.config
        return f"gpt3 {c.preset}: TP{c.tensor_parallel} x DP{c.data_parallel} on {c.device}, {c.train_iters} steps"


def from_mapping(mapping: Mapping[str, Any], source: str, field_prefix: str = "workload",
                 base_dir: Path | None = None) -> GPT3Workload:
    body = {key: value for key, value in mapping.items() if key != "kind"}
    config = GPT3Config.from_mapping(body, source, field_prefix)
    if config.data_path is not None:
        _check_data_path(config.data_path, source, f"{field_prefix}.data_path")
    return GPT3Workload(config)


def _check_data_path(prefix: str, source: str, where: str) -> None:
    """A megatron indexed dataset is two files, <prefix>.bin and <prefix>.idx; the ranks open them relative to
    the working directory. Missing ones are refused here rather than in every rank after its imports."""
    try:
        missing = [f"{prefix}{suffix}" for suffix in (".bin", ".idx") if not Path(f"{prefix}{suffix}").is_file()]
    except (OSError, ValueError) as error:
        raise InputError(source, where, f"not a usable path ({getattr(error, 'strerror', None) or error})") from None
    if missing:
        raise InputError(source, where, f"expected the prefix of a megatron indexed dataset; missing "
                                        f"{', '.join(missing)} (relative paths are from {Path.cwd()})")
