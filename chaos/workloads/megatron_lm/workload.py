"""`kind: megatron_lm`: an unmodified Megatron-LM training command as the system under test.

chaos owns only what it must (--save/--load in the run directory, --train-iters, --save-interval,
--log-interval 1, --exit-signal-handler when SIGTERM means preemption); every other flag is the user's.
Each rank is started through chaos.blackbox.exec_rank (it reports its pid, then execs the trainer) and
followed from outside (chaos.blackbox.follower with this kind's MegatronLogReader): faults land where the
run is *observed* to be, and say so.
"""

from __future__ import annotations

import functools
import hashlib
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from chaos.blackbox.exec_rank import IN_PROCESS
from chaos.workloads.base import InProcessRestarts, LaunchSpec, PhaseRules, WarmStart, WorkloadFacts
from chaos.workloads.megatron_lm.config import IN_PROCESS_RESTART, MegatronLMConfig
from chaos.workloads.megatron_lm.layout import MegatronLayout
from chaos.workloads.megatron_lm.reader import MegatronLogReader

KIND = "megatron_lm"

SAVE_PHASES = ("checkpoint.begin", "checkpoint.shard", "checkpoint.metadata", "checkpoint.tracker")
PHASES = ("iteration",) + SAVE_PHASES + ("checkpoint.load",)
"""`iteration`: iteration N was logged; the checkpoint phases are seen in the checkpoint directory;
`checkpoint.load`: the rank logged that it is loading iteration N."""

FINAL_STATE_UNAVAILABLE = ("Megatron-LM prints no hash of its model and optimizer state, so the final state "
                           "cannot be compared from outside (a trainer calling the probe's final_state can)")

MEGATRON_WARM_IMPORTS = ("torch", "torch.distributed.checkpoint", "megatron.core")
"""What a Megatron-LM rank spends its first seconds importing (resolved as the rank would: from the checkout
when its folder holds megatron/, else the installed megatron-core)."""
MEGATRON_WARM_IMPORTS_CUDA = ("torch", "torch.distributed.checkpoint")
"""On a GPU, without megatron.core: importing it initialises the CUDA driver (Megatron-LM d98e8a64dd asks the
device's name at import, docs/findings/megatron-core-import-initialises-cuda.md), and no child forked after
that can use CUDA, so the zygote would refuse every fork. The ranks import megatron.core themselves."""


@dataclass(frozen=True)
class MegatronLMWorkload:
    config: MegatronLMConfig
    kind: str = KIND
    observation: str = "log"
    golden_prefix: str = KIND
    final_state_unavailable: str | None = FINAL_STATE_UNAVAILABLE

    @property
    def facts(self) -> WorkloadFacts:
        c = self.config
        return WorkloadFacts(world_size=c.world_size, nodes=c.nodes, train_iters=c.train_iters,
                             save_interval=c.save_interval, exit_on_sigterm=c.exit_on_sigterm, device=c.device,
                             in_process=self._in_process())

    def _in_process(self) -> InProcessRestarts | None:
        """--inprocess-restart: NVIDIA's wrapper re-enters pretrain() in the same processes after a failure, each
        re-entry the job's next attempt, seen in the ranks' output (the wrapper's own lines). Megatron-LM bounds
        the re-entries by nothing (its --inprocess-max-iterations is read nowhere): restart.max_restarts does."""
        c = self.config
        if not c.inprocess_restart:
            return None
        here = shutil.which(c.python) if "/" not in c.python else c.python
        return InProcessRestarts("args", None, c.inprocess_soft_timeout_s, turned_on_by=IN_PROCESS_RESTART,
                                 nvrx_in_this_python=here is not None
                                 and Path(here).resolve() == Path(sys.executable).resolve())

    @property
    def phases(self) -> PhaseRules:
        # Triggers are observations of the whole job (a log line, a file in the checkpoint directory), so
        # any rank may be the target at any phase: there are no coordinator-only phases here.
        return PhaseRules(phases=PHASES, step_phases=("iteration",), save_phases=SAVE_PHASES,
                          index_limits={"checkpoint.shard": (None, "the k-th file written into the iteration's "
                                                                   "directory, counted over all ranks")},
                          default_phase="iteration", delay_allowed=True, exact=False)

    @property
    def layout(self) -> MegatronLayout:
        return MegatronLayout(self.config.ckpt_format)

    @property
    def printed_formats(self) -> Mapping[str, str]:
        return {"lm loss": "%.6E", "learning rate": "%.6E", "grad norm": "%.3f"}

    def launch(self, run_dir: Path) -> LaunchSpec:
        c = self.config
        run_dir = Path(run_dir).resolve()  # the ranks run elsewhere (cwd below): every path they get is absolute
        checkpoint_dir = run_dir / "checkpoints"
        c.write_yaml(run_dir / "workload.yaml")  # what ran, every setting explicit
        command = (c.python, c.script, *c.launch_args(checkpoint_dir))
        cwd = Path(c.megatron_lm) if c.megatron_lm else Path(c.script).parent
        return LaunchSpec(
            argv=(sys.executable, "-m", "chaos.blackbox.exec_rank", "--", *command),
            world_size=c.world_size, nodes=c.nodes, checkpoint_dir=checkpoint_dir, train_iters=c.train_iters,
            save_interval=c.save_interval, env=dict(c.env), cwd=cwd, observation="log",
            follower=functools.partial(MegatronLogReader, checkpoint_dir=checkpoint_dir),
            tracker_name=self.layout.tracker_name,
            warm=self._warm(command, c.device),
            in_process=c.inprocess_restart,
        )

    @staticmethod
    def _warm(command: tuple[str, ...], device: str) -> WarmStart | None:
        """A spare can become a rank only when the rank's interpreter is chaos's own (it runs the script in
        place, after exec_rank's hello): then it imports torch and megatron-core ahead, from the checkout
        when the script's folder holds one (its working directory is that folder, as for a cold rank)."""
        if Path(command[0]).resolve() != Path(sys.executable).resolve():
            return None
        imports = MEGATRON_WARM_IMPORTS_CUDA if device == "cuda" else MEGATRON_WARM_IMPORTS
        return WarmStart(imports=imports, module="chaos.blackbox.exec_rank",
                         args=(IN_PROCESS, "--", *command))

    def fingerprint_mapping(self) -> Mapping[str, Any]:
        return {**self.config.fingerprint_mapping(), "source": source_id(self.config.script, self.config.megatron_lm)}

    def scenario_mapping(self, as_written: Mapping[str, Any]) -> Mapping[str, Any]:
        return self.config.to_mapping()  # absolute paths: a run directory's scenario.yaml works from anywhere

    def describe(self) -> str:
        c = self.config
        return f"megatron_lm {Path(c.script).name}: {c.world_size} ranks on {c.device}, {c.train_iters} iterations"


@functools.lru_cache(maxsize=None)
def source_id(script: str, checkout: str | None) -> str:
    """Which code ran: the checkout's git commit (plus `+dirty` and a hash of the changes when it has any),
    else a sha256 over the script and every .py file under the checkout's megatron/ (a source tarball)."""
    if checkout and (Path(checkout) / ".git").exists():
        try:
            head = subprocess.run(["git", "-C", checkout, "rev-parse", "HEAD"], capture_output=True, text=True,
                                  timeout=30, check=True).stdout.strip()
            diff = subprocess.run(["git", "-C", checkout, "diff", "HEAD"], capture_output=True, timeout=60,
                                  check=True).stdout
            return head + (f"+dirty-{hashlib.sha256(diff).hexdigest()[:12]}" if diff else "")
        except (OSError, subprocess.SubprocessError):
            pass
    digest = hashlib.sha256(Path(script).read_bytes())
    if checkout and (Path(checkout) / "megatron").is_dir():
        for path in sorted((Path(checkout) / "megatron").rglob("*.py")):
            digest.update(str(path.relative_to(checkout)).encode())
            digest.update(path.read_bytes())
    return "sha256:" + digest.hexdigest()[:16]


def from_mapping(mapping: Mapping[str, Any], source: str, field_prefix: str = "workload",
                 base_dir: Path | None = None) -> MegatronLMWorkload:
    return MegatronLMWorkload(MegatronLMConfig.from_mapping(mapping, source, field_prefix, base_dir))
