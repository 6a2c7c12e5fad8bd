"""Faults on a trainer that cannot be held: fired when their trigger is *observed*.

A probe-instrumented rank waits at the planned point until the signal is out; an unmodified one keeps
running. So a trigger fires when the follower (chaos.blackbox.follower) sees it happen:

    iteration, step N        the line for iteration N was logged (by any rank)
    checkpoint.begin / .shard (index k) / .metadata / .tracker, step N
                             seen in the checkpoint directory while iteration N is saved
    checkpoint.load, step N  a rank logged that it is loading iteration N

and the signal goes out at once, or `delay_s` later (`{step: 15, delay_s: 2}`: 2 s into iteration 16).
What a landing records is what was observed when the signal went out: how long after the trigger was
seen (`latency_s`), the last iteration logged, the files in the checkpoint directory, the tracker, and
whether the trigger's window was still open. The window is the span the trigger promises: the next
iteration not yet logged (iteration triggers), the iteration's `.metadata` not yet written (begin, shard),
the tracker not yet naming the iteration after it (metadata), the load not yet finished (checkpoint.load). A
signal that went out after its window closed did not land where planned, and faults_landed says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from chaos import history
from chaos.blackbox.follower import Follower, Observation
from chaos.plan import PlannedFault

DIRECTORY_PHASES = ("checkpoint.begin", "checkpoint.shard", "checkpoint.metadata", "checkpoint.tracker")


@dataclass
class _Pending:
    fault: PlannedFault
    seen: Observation | None = None
    fire_at: float | None = None
    fired: bool = False


@dataclass
class ObservedTriggers:
    follower: Follower
    faults: list[PlannedFault]
    _pending: dict[str, _Pending] = field(default_factory=dict)
    _metadata_seen: set[int] = field(default_factory=set)
    _committed: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._pending = {f.id: _Pending(f) for f in self.faults if f.trigger.phase is not None}

    def due(self, seen: list[Observation], now: float) -> list[tuple[str, dict]]:
        """(fault id, evidence) of every fault whose trigger was observed and whose delay has passed."""
        for observation in seen:
            self._track(observation)
            for pending in self._pending.values():
                if pending.seen is None and matches(pending.fault, observation):
                    pending.seen = observation
                    pending.fire_at = observation.mono + (pending.fault.trigger.delay_s or 0.0)
        out = []
        for fault_id, pending in self._pending.items():
            if pending.fired or pending.fire_at is None or now < pending.fire_at:
                continue
            pending.fired = True
            out.append((fault_id, self._evidence(pending, now)))
        return out

    def next_fire_at(self) -> float | None:
        """When the earliest observed-but-delayed fault is due (None: none waiting)."""
        times = [p.fire_at for p in self._pending.values() if p.fire_at is not None and not p.fired]
        return min(times) if times else None

    def close(self) -> None:
        self.follower.close()

    # ---- internals ------------------------------------------------------------------------------------
    def _track(self, observation: Observation) -> None:
        # Each window ends at the save's next step as this trainer takes it: a trainer that names the
        # iteration in its tracker before writing the data (a bug chaos must catch) still lands "between
        # shard files" when the signal goes out between them.
        if observation.event == "checkpoint.metadata" and observation.step is not None:
            self._metadata_seen.add(observation.step)
        elif observation.event == history.CHECKPOINT_COMMITTED:
            iteration = int(observation.fields["iteration"])
            if iteration in self._metadata_seen:
                self._committed.add(iteration)

    def _evidence(self, pending: _Pending, now: float) -> dict:
        trigger, seen = pending.fault.trigger, pending.seen
        assert seen is not None
        snapshot = self.follower.snapshot()
        open_, why = self._window(trigger.phase, seen.step, snapshot)
        return {"step": seen.step if trigger.step is None else trigger.step, "phase": trigger.phase,
                "index": seen.index, "seen_rank": seen.rank, "latency_s": round(now - seen.mono, 6),
                "delay_s": trigger.delay_s, "window_open": open_, "window": why, **snapshot}

    def _window(self, phase: str | None, step: int | None, snapshot: dict) -> tuple[bool, str]:
        last = snapshot["last_iteration_logged"]
        if phase == "iteration":
            if last is not None and step is not None and last > step:
                return False, f"iteration {last} was already logged: the signal landed after iteration {step + 1}"
            return True, f"iteration {step} was the last logged"
        if phase in ("checkpoint.begin", "checkpoint.shard"):
            if step in self._metadata_seen:
                return False, f"the save of iteration {step} had already written its metadata"
            return True, f"the save of iteration {step} had not written its metadata yet"
        if phase == "checkpoint.metadata":
            if step in self._committed:
                return False, f"the tracker already named iteration {step}"
            return True, f"the tracker did not name iteration {step} yet"
        if phase == "checkpoint.load":
            if snapshot["load_finished"]:
                return False, "the load had already finished"
            return True, "the load had not finished"
        return True, f"tracker: {snapshot['tracker']!r}"


def matches(fault: PlannedFault, observation: Observation) -> bool:
    trigger = fault.trigger
    if trigger.step is not None and observation.step != trigger.step:
        return False
    if trigger.phase == "iteration":
        return observation.event == history.METRICS
    if trigger.phase == "checkpoint.load":
        return observation.event == history.POINT and observation.phase == "checkpoint.load"
    if trigger.phase in DIRECTORY_PHASES:
        return observation.event == trigger.phase and (trigger.index is None or observation.index == trigger.index)
    return False
