"""Synthetic runs: histories and checkpoint directories written the way a correct trainer and supervisor
would, in milliseconds and without torch, so checkers and reports can be tested (and a bug planted)
without training anything. A test helper: it lives with the tests, never in the package.

    run = SyntheticRun(tmp_path)
    kill = run.fault("f1", step=6, phase="backward", ranks=(1,))
    run.attempt(1, resume_from=0, last_step=5, end="killed", fault=kill)
    run.attempt(2, resume_from=4, last_step=12, end="complete")
    run.finish()
    results = run_checks(run.context())
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from chaos import history as h
from chaos.checkers.base import CheckContext
from chaos.checkpoint_layout import MANIFEST, TRACKER, iteration_dir_name
from chaos.history import HistoryWriter, load_run_history
from chaos.faults import Action
from chaos.faults.corrupt import Corrupt
from chaos.faults.node_loss import NodeLoss
from chaos.faults.pause import Pause
from chaos.faults.signals import Signal
from chaos.faults.straggler import Straggler
from chaos.plan import PlannedFault, RestartPolicy, Target, Trigger
from chaos.workloads.base import WorkloadFacts
from chaos.workloads.gpt3.layout import ManifestLayout

GOLDEN_FINAL_HASH = "ab" * 32


def golden_loss(step: int) -> float:
    return 10.9 - 0.31 * step + 0.0071 * step * step


def golden_samples(step: int, global_batch_size: int = 8) -> float:
    return float(step * global_batch_size)


@dataclass
class SyntheticRun:
    run_dir: Path
    world_size: int = 2
    train_iters: int = 12
    save_interval: int = 4
    keep_last: int = 0
    exit_on_sigterm: bool = True
    restart: RestartPolicy = field(default_factory=lambda: RestartPolicy(max_restarts=3, hang_timeout_s=10.0))
    plan: list[PlannedFault] = field(default_factory=list)
    mono: float = 1000.0

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)
        self.checkpoint_dir = self.run_dir / "checkpoints"
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        self.supervisor = HistoryWriter(h.supervisor_history_path(self.run_dir))
        self.sup(h.RUN_START, scenario="synthetic", seed=0, run_dir=str(self.run_dir))

    # ---- clock and writers ------------------------------------------------------------------------
    def tick(self, seconds: float = 0.1) -> float:
        self.mono += seconds
        return self.mono

    def sup(self, event: str, **fields: Any) -> dict:
        mono = self.tick()
        return self.supervisor.write(event, mono=mono, t=mono, **fields)

    def golden_metrics(self) -> dict[str, dict[int, float]]:
        steps = range(1, self.train_iters + 1)
        return {"lm loss": {s: golden_loss(s) for s in steps},
                "consumed samples": {s: golden_samples(s) for s in steps}}

    # ---- faults -------------------------------------------------------------------------------------
    def fault(self, fault_id: str, step: int | None, phase: str | None, ranks: tuple[int, ...] = (0,),
              attempt: int = 1, signal: str | None = "SIGKILL", index: int | None = None,
              corrupt: str | None = None, pause_s: float | None = None,
              straggler: tuple[float, float] | None = None, node: int | None = None) -> PlannedFault:
        """A planned fault; `node`: a node loss of that node (its ranks are `ranks`)."""
        if node is not None:
            action: Action = NodeLoss()
        elif pause_s is not None:
            action = Pause(duration_s=pause_s)
        elif straggler is not None:
            action = Straggler(cpus=straggler[0], duration_s=straggler[1])
        else:
            action = Corrupt(corrupt) if corrupt else Signal(signal)
        kind = "all" if len(ranks) == self.world_size and len(ranks) > 1 else ("rank" if len(ranks) == 1 else "ranks")
        planned = PlannedFault(fault_id, Trigger(step=step, phase=phase, index=index, attempt=attempt),
                               Target(kind="node" if node is not None else kind, ranks=tuple(ranks), node=node), action)
        self.plan.append(planned)
        return planned

    def land(self, fault: PlannedFault, attempt: int, writers: Mapping[int, HistoryWriter], **override: Any) -> None:
        """The target ranks hold at the planned point, then the supervisor acts on them."""
        trigger = fault.trigger
        place = {"step": trigger.step, "phase": trigger.phase, "index": trigger.index, **override}
        for rank in fault.target.ranks:
            if rank in writers:
                writers[rank].write(h.HELD, mono=self.tick(), fault_id=fault.id, step=place["step"],
                                    phase=place["phase"], index=place["index"])
            self.sup(h.FAULT_LANDED, fault_id=fault.id, attempt=override.get("attempt", attempt), rank=rank,
                     pid=self.pid(attempt, rank), step=place["step"], phase=place["phase"], index=place["index"],
                     action=fault.action.kind, signal=fault.action.sends_signal,
                     held=True)

    def corrupt(self, fault: PlannedFault, iteration: int, attempt: int = 1) -> Path:
        """Flips a byte of a shard file of a committed checkpoint, as the corrupt action does."""
        target = self.checkpoint_dir / iteration_dir_name(iteration) / "__0_0.distcp"
        data = bytearray(target.read_bytes())
        data[0] ^= 0xFF
        target.write_bytes(bytes(data))
        self.land(fault, attempt, {})
        self.sup("corrupted", fault_id=fault.id, path=str(target), mode=fault.action.corrupt, iteration=iteration)
        return target

    # ---- checkpoints -------------------------------------------------------------------------------
    def write_checkpoint(self, iteration: int, committed: bool = True) -> Path:
        directory = self.checkpoint_dir / iteration_dir_name(iteration)
        directory.mkdir(parents=True, exist_ok=True)
        for rank in range(self.world_size):
            (directory / f"__{rank}_0.distcp").write_bytes(f"shard {rank} of iteration {iteration}".encode() * 8)
        (directory / ".metadata").write_bytes(b"metadata %d" % iteration)
        if committed:
            files = {}
            for path in sorted(directory.iterdir()):
                if path.name != MANIFEST:
                    files[path.name] = {"size": path.stat().st_size,
                                        "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
            (directory / MANIFEST).write_text(json.dumps({"iteration": iteration, "files": files}))
            (self.checkpoint_dir / TRACKER).write_text(str(iteration))
        return directory

    def pid(self, attempt: int, rank: int) -> int:
        return 10000 + 100 * attempt + rank

    # ---- one attempt -----------------------------------------------------------------------------------
    def attempt(self, index: int, resume_from: int, last_step: int, end: str = "complete",
                fault: PlannedFault | None = None, loss: Callable[[int], float] | None = None,
                samples: Callable[[int], float] | None = None, saves: set[int] | None = None,
                loaded_path: str | None = None, final_hash: str = GOLDEN_FINAL_HASH, teardown_survivors=(),
                hang_after_s: float | None = None, land: dict | None = None, open_saves: set[int] = frozenset(),
                after_land: Callable[[], None] | None = None, start: Mapping[str, Any] | None = None) -> None:
        """Writes one attempt: load `resume_from`, train to `last_step` (saving every save_interval unless
        `saves` says which iterations; `open_saves` begin and are still being written when the attempt ends,
        as an async save is), then end: complete | preempted | killed | hung. `start`: fields added to the
        supervisor's attempt_start (by: job, in_process)."""
        loss = loss or golden_loss
        samples = samples or golden_samples
        ranks = range(self.world_size)
        writers, each = self._start_attempt(index, **(start or {}))
        if resume_from or loaded_path:
            path = loaded_path or str(self.checkpoint_dir / iteration_dir_name(resume_from))
            each(h.CHECKPOINT_LOADED, iteration=resume_from, path=path)
        else:
            each(h.CHECKPOINT_LOADED, iteration=0, path=None)
        for step in range(resume_from + 1, last_step + 1):
            each(h.STEP_BEGIN, step=step)
            each(h.METRICS, step=step, lm_loss=loss(step), grad_norm=1.0, lr=1e-3, consumed_samples=samples(step))
            each(h.STEP_END, step=step)
            due = step in saves if saves is not None else (step % self.save_interval == 0 or step == self.train_iters)
            if due or step in open_saves:
                each(h.POINT, step=step, phase="checkpoint.begin")
            if due:
                path = self.write_checkpoint(step)
                each(h.CHECKPOINT_COMMITTED, iteration=step, path=str(path))
        if fault is not None:
            self.land(fault, index, writers, **(land or {}))
            if after_land is not None:
                after_land()
        if end == "complete":
            each(h.FINAL_STATE, step=self.train_iters, state_hash=final_hash)
            each(h.TRAIN_END, step=self.train_iters, reason="complete")
            self._exits(index, ranks)
            self.sup(h.ATTEMPT_END, attempt=index, outcome="complete")
        elif end == "preempted":
            each(h.SIGNAL_RECEIVED, signal="SIGTERM", step=last_step, phase=None)
            each(h.TRAIN_END, step=last_step, reason="preempted")
            self._exits(index, ranks)
            self.sup(h.ATTEMPT_END, attempt=index, outcome="preempted")
        elif end == "killed":
            victims = fault.target.ranks if fault else (0,)
            for rank in victims:
                self.sup(h.RANK_EXIT, attempt=index, rank=rank, pid=self.pid(index, rank), returncode=-9, signal="SIGKILL")
            self.sup(h.DEATH_DETECTED, attempt=index, rank=victims[0], detect_latency_s=0.05)
            self.sup(h.TEARDOWN, attempt=index, duration_s=0.2, sigterm=1, sigkill=0, survivors=list(teardown_survivors))
            self._exits(index, [r for r in ranks if r not in victims], returncode=-15, signal="SIGTERM")
            self.sup(h.ATTEMPT_END, attempt=index, outcome="crashed")
        elif end == "hung":
            self.tick(hang_after_s if hang_after_s is not None else self.restart.hang_timeout_s + 0.5)
            self.sup(h.HANG_DETECTED, attempt=index, idle_s=self.restart.hang_timeout_s)
            self.sup(h.TEARDOWN, attempt=index, duration_s=3.1, sigterm=2, sigkill=1, survivors=list(teardown_survivors))
            self.sup(h.ATTEMPT_END, attempt=index, outcome="hung")
        else:
            raise ValueError(f"unknown end {end!r}")
        for writer in writers.values():
            writer.close()

    def _start_attempt(self, index: int, **start: Any) -> tuple[dict[int, HistoryWriter], Callable[..., None]]:
        """The supervisor's attempt_start and every rank's start record; `each` writes one record to all ranks."""
        ranks = range(self.world_size)
        self.sup(h.ATTEMPT_START, attempt=index, launcher="direct", port=29500,
                 processes=[{"pid": self.pid(index, r), "role": f"rank {r}"} for r in ranks], **start)
        writers = {r: HistoryWriter(h.rank_history_path(self.run_dir, index, r), rank=r, attempt=index) for r in ranks}

        def each(event: str, **fields: Any) -> None:
            for writer in writers.values():
                writer.write(event, mono=self.tick(0.01), **fields)

        for rank, writer in writers.items():
            writer.write(h.START, mono=self.tick(), pid=self.pid(index, rank), world_size=self.world_size,
                         local_rank=rank, host="synthetic")
        return writers, each

    def failed_attempt(self, index: int, resume_from: int, stop_step: int | None, stop_phase: str = "forward",
                       returncode: int | None = 1, signal: str | None = None, fault: PlannedFault | None = None,
                       loaded: bool = True, outcome: str = "crashed") -> None:
        """An attempt ended by a failure of the job's own: it loads `resume_from` (loaded=False: it dies in
        `checkpoint.load` of that iteration, before checkpoint_loaded), trains to stop_step - 1 (saving every
        save_interval), begins `stop_step` and dies in `stop_phase`: rank 0 exits (returncode, signal), the
        others are torn down. A `fault` given lands at the stop first (the tester's, not the job's)."""
        ranks = range(self.world_size)
        writers, each = self._start_attempt(index)
        path = str(self.checkpoint_dir / iteration_dir_name(resume_from)) if resume_from else None
        if not loaded:
            each(h.POINT, step=resume_from, phase="checkpoint.load")
        else:
            each(h.CHECKPOINT_LOADED, iteration=resume_from, path=path)
            for step in range(resume_from + 1, stop_step if stop_step is not None else resume_from + 1):
                each(h.STEP_BEGIN, step=step)
                each(h.METRICS, step=step, lm_loss=golden_loss(step), grad_norm=1.0, lr=1e-3,
                     consumed_samples=golden_samples(step))
                each(h.STEP_END, step=step)
                if step % self.save_interval == 0:
                    each(h.POINT, step=step, phase="checkpoint.begin")
                    each(h.CHECKPOINT_COMMITTED, iteration=step, path=str(self.write_checkpoint(step)))
            if stop_step is not None:
                each(h.STEP_BEGIN, step=stop_step)
                each(h.POINT, step=stop_step, phase=stop_phase)
        if fault is not None:
            self.land(fault, index, writers)
        self.sup(h.RANK_EXIT, attempt=index, rank=0, pid=self.pid(index, 0), returncode=returncode, signal=signal)
        self.sup(h.DEATH_DETECTED, attempt=index, rank=0, detect_latency_s=0.05)
        self.sup(h.TEARDOWN, attempt=index, duration_s=0.2, sigterm=self.world_size - 1, sigkill=0, survivors=[])
        for rank in ranks:
            if rank != 0:
                self.sup(h.RANK_EXIT, attempt=index, rank=rank, pid=self.pid(index, rank), returncode=-15,
                         signal="SIGTERM", during_teardown=True)
        self.sup(h.ATTEMPT_END, attempt=index, outcome=outcome)
        for writer in writers.values():
            writer.close()

    def _exits(self, index: int, ranks, returncode: int = 0, signal: str | None = None) -> None:
        for rank in ranks:
            self.sup(h.RANK_EXIT, attempt=index, rank=rank, pid=self.pid(index, rank), returncode=returncode,
                     signal=signal)

    def finish(self, outcome: str = "complete") -> None:
        self.sup(h.RUN_END, outcome=outcome)
        self.supervisor.close()
        (self.run_dir / "plan.json").write_text(json.dumps([f.to_dict() for f in self.plan]))

    def context(self, **overrides: Any) -> CheckContext:
        values = dict(run_dir=self.run_dir, history=load_run_history(self.run_dir), plan=tuple(self.plan),
                      golden_metrics=self.golden_metrics(), golden_final_state_hash=GOLDEN_FINAL_HASH, compare=None,
                      train_iters=self.train_iters, save_interval=self.save_interval, restart=self.restart,
                      checkpoint_dir=self.checkpoint_dir,
                      layout=ManifestLayout(),
                      facts=WorkloadFacts(world_size=self.world_size, nodes=1, train_iters=self.train_iters,
                                          save_interval=self.save_interval, exit_on_sigterm=self.exit_on_sigterm,
                                          device="cpu", keep_last=self.keep_last))
        values.update(overrides)
        return CheckContext(**values)


def standard_run(run_dir: Path) -> SyntheticRun:
    """A correct run with three faults: SIGKILL mid-backward of step 7 (resume from 4), SIGTERM of every
    rank in step 10 (graceful: save 10, resume from 10), and nothing else wrong."""
    run = SyntheticRun(run_dir)
    kill = run.fault("f1", step=7, phase="backward", ranks=(1,))
    term = run.fault("f2", step=10, phase="forward", ranks=(0, 1), attempt=2, signal="SIGTERM")
    run.attempt(1, resume_from=0, last_step=6, end="killed", fault=kill)
    run.attempt(2, resume_from=4, last_step=10, end="preempted", fault=term, saves={8, 10})
    run.attempt(3, resume_from=10, last_step=12, end="complete")
    run.finish()
    return run
