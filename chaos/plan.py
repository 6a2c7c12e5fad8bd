"""Planned faults: the concrete, typed form every scenario fault (scripted or seeded-random) becomes
before a run: when (chaos.plan.Trigger), whom (Target) and what (a chaos.faults kind). The supervisor executes
exactly these; report.json echoes them as `planned`."""

from __future__ import annotations

import os

from dataclasses import asdict, dataclass
from typing import Literal

from chaos.faults import Action, action_from_dict


@dataclass(frozen=True)
class Trigger:
    step: int | None = None
    """Training step (1-based) at which the probe point must be reached; None = the first time at any step."""
    phase: str | None = None
    """Probe point name (chaos.probe.PHASES); None means a wall-clock trigger (after_s)."""
    index: int | None = None
    """For checkpoint.shard: after the k-th shard file (1-based); None = any."""
    attempt: int = 1
    """Which launch this fault belongs to (1 = the first; 2 = the first restart...)."""
    after_s: float | None = None
    """Wall-clock trigger: seconds after the attempt's launch (when phase is None)."""
    delay_s: float | None = None
    """Observed (black-box) triggers only: fire this many seconds after the trigger was observed, e.g.
    `{step: 15, delay_s: 2}` = 2 s into the iteration after iteration 15 was logged."""


@dataclass(frozen=True)
class Target:
    kind: Literal["rank", "ranks", "node", "all"]
    ranks: tuple[int, ...]
    """Always concrete after planning (a node or `all` is resolved to its ranks)."""
    node: int | None = None
    process: str = "rank"
    """What the fault hits: the rank itself; or, under an elastic launcher, the rank's `launcher` (the agent
    that started it) or its `rank_monitor` (ft_launcher's heartbeat watcher of that rank), the rank's
    trigger deciding when (PROCESSES)."""


PROCESSES = ("rank", "launcher", "rank_monitor")

@dataclass(frozen=True)
class PlannedFault:
    id: str
    trigger: Trigger
    target: Target
    action: Action
    origin: str = "scenario"
    """'scenario' or 'random(seed=N)': where this fault came from, for the report and for replay."""

    def to_dict(self) -> dict:
        target = asdict(self.target)
        if target["process"] == "rank":
            del target["process"]  # the default, left out: plan.json as before the other processes existed
        return {"id": self.id, "trigger": asdict(self.trigger), "target": target,
                "action": self.action.to_dict(), "origin": self.origin}

    def describe(self) -> str:
        """One line for people: `f1: attempt 1, step 3 backward -> rank 1: SIGKILL (scenario)`."""
        t = self.trigger
        if t.phase is None:
            when = f"{t.after_s:g} s after launch" if t.after_s is not None else "at once"
        else:
            when = (f"step {t.step} " if t.step is not None else "first ") + t.phase
            when += f" #{t.index}" if t.index is not None else ""
            when += f" + {t.delay_s:g} s" if t.delay_s else ""
        who = (f"node {self.target.node} (ranks {', '.join(map(str, self.target.ranks))})" if self.target.kind == "node"
               else "all ranks" if self.target.kind == "all"
               else ("rank " if len(self.target.ranks) == 1 else "ranks ") + ", ".join(map(str, self.target.ranks)))
        if self.target.process != "rank":
            who += f"'s {self.target.process.replace('_', ' ')}"
        return f"{self.id}: attempt {t.attempt}, {when} -> {who}: {self.action.describe()} ({self.origin})"

    @classmethod
    def from_dict(cls, data: dict) -> "PlannedFault":
        target = dict(data["target"])
        target["ranks"] = tuple(target["ranks"])
        return cls(
            id=data["id"],
            trigger=Trigger(**data["trigger"]),
            target=Target(**target),
            action=action_from_dict(data["action"]),
            origin=data.get("origin", "scenario"),
        )


WARM_CORES_PER_RANK = 2
"""restart.warm auto: spares pay off where os.cpu_count() >= this x world_size (measured, docs/benchmarks.md#cold-against-warm-restarts: on
2 cores with 4 ranks a warm restart was 1.12x faster and a soak 0.94x as fast)."""


def cores_for_warm_spares(world_size: int) -> bool:
    """Whether this machine has the cores for a rank and its spare's imports each (WARM_CORES_PER_RANK)."""
    return (os.cpu_count() or 1) >= WARM_CORES_PER_RANK * world_size


@dataclass(frozen=True)
class RestartPolicy:
    max_restarts: int = 5
    teardown_grace_s: float = 3.0
    """SIGTERM -> this many seconds -> SIGKILL, for survivors of a dead or hung attempt."""
    hang_timeout_s: float = 60.0
    """No history progress from any rank for this long (and none held) = hung."""
    startup_timeout_s: float = 180.0
    """A rank that has not said hello by then counts as hung; also the silence allowed while a rank says it is
    busy with long work (probe.busy: imports and building, the final state hash)."""
    warm: bool | str | None = None
    """How ranks start without a new interpreter's imports, where the workload declares its imports and the
    launcher is direct (elsewhere every rank is a fresh interpreter):
    "fork": every rank of every attempt, the first included, is forked from the run's zygote, which imported
    the workload's modules once (chaos.supervisor.spares.zygote); true: restarts take warm spares
    (interpreters that imported ahead; they pay off only with a spare core per rank, WARM_CORES_PER_RANK);
    false: cold. None (auto): fork (tested equivalent to cold, bitwise, for both workload kinds)."""
    by: str = "chaos"
    """Who restarts the job after a fault: "chaos" (the supervisor tears the attempt down and launches the next)
    or "job" (the job's own recovery layer: the elastic agent of torchrun or ft_launcher with --max-restarts=max_restarts:
    chaos launches once, lands the planned faults, and observes each restart the job does itself; it tears
    down only at the end, or when the job gives up or hangs past hang_timeout_s)."""
    job_hang_timeout_s: float | None = None
    """How long the job's own hang detection lets a rank make no progress before it kills it (ft_launcher's
    --ft-rank-heartbeat-timeout, read from launcher_args when not given): a pause at least this long is not
    the job's to ride out (the stalls check); the job's or chaos's restart recovers it. None: it has none."""
