"""Fault landing: one attempt's planned faults, each done to its ranks when its trigger comes (held ranks
gathered, a wall-clock time, an observed trigger), the stalls that end after their duration, and the
fault_landed / fault_missed records. A fault done by the rank's probe (Action.release_message, a raise) is
landed by releasing the held rank with that message; a rank not held cannot have it and is recorded missed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from chaos import history
from chaos.faults import FaultContext, Started
from chaos.ownership.processes import ProcessTable, TrackedProcess
from chaos.plan import PlannedFault
from chaos.supervisor import beside
from chaos.supervisor.attempt_context import AttemptContext
from chaos.supervisor.launcher import ELASTIC
from chaos.supervisor.ranks import Rank

HOLD_GATHER_S = 10.0
"""A fault on several ranks waits this long for all of them to be held, then lands on those that are."""


@dataclass
class _Stall:
    """A fault with a duration in progress (a pause, straggler or partition): `started.stop` ends it at
    `until_mono`, or with the attempt."""
    fault_id: str
    kind: str
    ranks: list[int]
    since_mono: float
    until_mono: float
    started: Started
    attempt: int
    """The attempt it landed in (a stall beside the ranks may end in a later one)."""
    beside: bool = False
    """On a process beside the ranks (a launcher, a rank monitor): under restart.by: job it outlives the
    attempt, which the job ends without a teardown, and runs its course in the next (carry_stalls)."""

    def close(self) -> None:
        """A rank monitor adopted for the stall is watched no longer (the launcher is the launch's)."""
        for process in getattr(self.started, "processes", []):
            if process.role == "rank_monitor":
                process.close()


@dataclass
class _FaultState:
    fault: PlannedFault
    held: dict[int, dict] = field(default_factory=dict)     # rank -> hold message
    gather_deadline: float | None = None
    landed_ranks: set[int] = field(default_factory=set)
    missed_ranks: dict[int, str] = field(default_factory=dict)
    fired: bool = False                                     # wall-clock faults


class FaultLanding:
    """The faults planned for one attempt. `ranks` (filled by the handshake) and `table` are the attempt's."""

    def __init__(self, context: AttemptContext, number: int, ranks: dict[int, Rank], table: ProcessTable) -> None:
        self.ctx = context
        self.spec = context.launch
        self.number = number
        self.ranks = ranks
        self.table = table
        self.faults = {f.id: _FaultState(f) for f in context.faults if f.trigger.attempt == number}
        self.stalls: list[_Stall] = []

    # ---- when a fault lands ---------------------------------------------------------------------------
    def holds_for(self, rank: int) -> list[dict]:
        """The holds of a rank's plan: where it waits for its faults (phase triggers only)."""
        return [{"fault_id": s.fault.id, "step": s.fault.trigger.step, "phase": s.fault.trigger.phase,
                 "index": s.fault.trigger.index}
                for s in self.faults.values() if s.fault.trigger.phase is not None and rank in s.fault.target.ranks]

    def hold(self, rank: Rank, fault_id: str, step: int | None, phase: str | None, index: int | None) -> bool:
        """A rank is held at a fault's point; False: no such fault in this attempt (the rank is released)."""
        state = self.faults.get(fault_id)
        if state is None:
            return False
        now = time.monotonic()
        hold = {"step": step, "phase": phase, "index": index, "since": now}
        state.held[rank.rank] = hold
        rank.held[state.fault.id] = hold
        if state.gather_deadline is None:
            state.gather_deadline = now + HOLD_GATHER_S
        gathered = all(r in state.held or self.gone(r) for r in state.fault.target.ranks)
        # A straggler held after the gather deadline already did the fault to the others is hit at once,
        # and alone: the ranks already done must not get a second signal (nor a second fault_landed).
        window_closed = bool(state.landed_ranks or state.missed_ranks)
        pending = self._not_yet_done(state)
        if pending and (gathered or window_closed):
            self._land(state, pending)
        return True

    def land_gathered(self, now: float) -> None:
        """Each fault whose gather deadline passed lands on the ranks held by then."""
        for state in self.faults.values():
            if state.gather_deadline is not None and now >= state.gather_deadline:
                state.gather_deadline = None
                pending = self._not_yet_done(state)
                if pending:
                    self._land(state, pending)

    def fire_wall_clock(self, now: float, launch_mono: float) -> None:
        """Each wall-clock fault whose time since the launch (`launch_mono`) has come lands on its ranks."""
        for state in self.faults.values():
            trigger = state.fault.trigger
            if state.fired or trigger.phase is not None or trigger.after_s is None:
                continue
            if now - launch_mono < trigger.after_s:
                continue
            waiting = [r for r in state.fault.target.ranks if r not in self.ranks and not self.gone(r)]
            if waiting:
                continue  # fire once every target rank said hello (a rank not started yet cannot be hit)
            state.fired = True
            alive = [r for r in state.fault.target.ranks if r in self.ranks and not self.ranks[r].process.exited]
            for r in set(state.fault.target.ranks) - set(alive):
                state.missed_ranks[r] = "the rank had exited before the wall-clock trigger"
            if alive:
                self._land(state, alive, held=False)

    def land_observed(self, fault_id: str, evidence: dict) -> None:
        """A fault whose trigger the follower observed (log-observed workloads) lands on its running ranks."""
        state = self.faults[fault_id]
        alive = [r for r in state.fault.target.ranks if r in self.ranks and not self.ranks[r].process.exited]
        for r in set(state.fault.target.ranks) - set(alive):
            state.missed_ranks[r] = "the rank was not running when its observed trigger fired"
        if alive:
            self._land(state, alive, held=False, observed=evidence)

    # ---- landing ------------------------------------------------------------------------------------------
    @staticmethod
    def _not_yet_done(state: _FaultState) -> list[int]:
        """The held ranks this fault has neither landed on nor given up on."""
        return sorted(r for r in state.held if r not in state.landed_ranks and r not in state.missed_ranks)

    def gone(self, rank: int) -> bool:
        process = self.table.ranks.get(rank)
        return process is not None and process.exited

    def _land(self, state: _FaultState, ranks: list[int], held: bool = True,
              observed: dict | None = None) -> None:
        fault = state.fault
        if fault.target.process != "rank":
            self._land_beside(state, ranks)
            return
        targets = [self.ranks[r].process for r in ranks]
        extra = self._agents_taken_with(fault)
        action = fault.action
        message = action.release_message()
        if message is not None:
            # done by the rank's probe on its release: a rank that is not held cannot have it
            for r in [r for r in ranks if r not in state.held]:
                state.missed_ranks[r] = (f"a {action.kind} is done by the rank's probe: only a rank held at a "
                                         f"phase trigger can {action.kind}")
            ranks = [r for r in ranks if r in state.held]
            if not ranks:
                return
            targets = [self.ranks[r].process for r in ranks]
        context = FaultContext(targets=extra + targets, checkpoint_dir=self.spec.checkpoint_dir,
                               cgroup_name=f"chaos-{self.ctx.run_id}-a{self.number:02d}-{fault.id}",
                               hosts=self.ctx.hosts, node=fault.target.node)
        try:
            started = action.start(context)
        except Exception as error:  # noqa: BLE001 - a fault that cannot be done is recorded as missed
            for r in ranks:
                state.missed_ranks[r] = f"the {action.kind} action failed: {error}"
            self._release(state, ranks)
            return
        if started.event is not None:  # a record of its own: the file it corrupted, the node it lost
            event, fields = started.event
            self.ctx.record(event, fault_id=fault.id, attempt=self.number, **fields)
        for r in ranks:
            process = self.ranks[r].process
            if started.delivered is not None and process.pid not in started.delivered:
                state.missed_ranks[r] = "the rank was already gone when the signal was sent"
                continue
            hold = state.held.get(r)
            if hold is not None:
                step, phase, index = hold["step"], hold["phase"], hold["index"]
            elif observed is not None:
                step, phase, index = observed["step"], observed["phase"], observed["index"]
            else:
                tail = self.ranks[r].tail
                tail.poll()
                step, phase, index = tail.step, tail.phase, None
            state.landed_ranks.add(r)
            extra = {"observed": observed} if observed is not None else {}
            extra.update(started.landed)
            self.ctx.landed.append(self.ctx.record(
                history.FAULT_LANDED, fault_id=fault.id, attempt=self.number, rank=r, pid=process.pid, step=step,
                phase=phase, index=index, action=action.kind, signal=started.signal,
                held=held, node=process.node, **extra))
            if action.ends_attempt:
                self.ranks[r].awaiting_death_since = time.monotonic()
        if action.stall:  # it ends after its duration
            if started.cgroup is not None:
                self.ctx.watchdog.guard_cgroup(Path(started.cgroup))  # removed (its ranks killed) if we die
            now = time.monotonic()
            self.stalls.append(_Stall(fault.id, action.kind, sorted(state.landed_ranks & set(ranks)), now,
                                      now + float(getattr(action, "duration_s")), started, self.number))
        if message is not None:  # the rank does the fault itself on reading its release (and dies of it)
            self._release(state, sorted(state.landed_ranks & set(ranks)), message)
        if not action.ends_attempt:
            self._release(state, ranks)  # a paused rank reads its release once it is continued

    def _land_beside(self, state: _FaultState, ranks: list[int]) -> None:
        """A fault on a process beside the rank (its launcher, its rank monitor), when the rank's trigger
        fires: the rank itself is released at once and lives on, whatever the fault does to the job."""
        fault, action = state.fault, state.fault.action
        for r in ranks:
            rank = self.ranks[r]
            process, why = beside.find(fault.target.process, rank.process, self.table)
            if process is None:
                state.missed_ranks[r] = why
                continue
            try:
                started = action.start(FaultContext(targets=[process]))
            except Exception as error:  # noqa: BLE001 - a fault that cannot be done is recorded as missed
                state.missed_ranks[r] = f"the {action.kind} action failed: {error}"
                continue
            if started.delivered is not None and process.pid not in started.delivered:
                state.missed_ranks[r] = f"the rank's {fault.target.process} was already gone when the signal was sent"
                continue
            hold = state.held.get(r)
            step, phase, index = (hold["step"], hold["phase"], hold["index"]) if hold is not None else \
                (rank.tail.step, rank.tail.phase, None)
            state.landed_ranks.add(r)
            self.ctx.landed.append(self.ctx.record(
                history.FAULT_LANDED, fault_id=fault.id, attempt=self.number, rank=r, pid=process.pid, step=step,
                phase=phase, index=index, action=action.kind, signal=started.signal, held=hold is not None,
                node=rank.process.node, process=fault.target.process, **started.landed))
            if not action.stall and process.role == "rank_monitor":
                process.close()
            if action.stall:
                now = time.monotonic()
                self.stalls.append(_Stall(fault.id, action.kind, [r], now,
                                          now + float(getattr(action, "duration_s")), started, self.number,
                                          beside=True))
        self._release(state, ranks)

    def end_stalls(self, now: float | None) -> None:
        """Ends each stall whose duration is over (SIGCONT, quota released, link healed); now=None: the attempt
        has ended, end them all (the hosts outlive the attempt: the next one must find the network whole)."""
        for stall in list(self.stalls):
            if now is not None and now < stall.until_mono:
                continue
            self.stalls.remove(stall)
            fields = stall.started.stop(now is not None)
            stall.close()
            self.ctx.record(history.STALL_ENDED, fault_id=stall.fault_id, attempt=stall.attempt, kind=stall.kind,
                            ranks=stall.ranks, stalled_s=round(time.monotonic() - stall.since_mono, 3),
                            by="elapsed" if now is not None else "attempt_end", **fields,
                            **({"outlived_attempt": True} if stall.attempt != self.number else {}))

    def carry_stalls(self) -> list[_Stall]:
        """restart.by: job, the job restarting itself: the stalls of processes beside the ranks go on into the
        next attempt (nothing tore them down); the others end with this attempt."""
        carried = [stall for stall in self.stalls if stall.beside]
        self.stalls = [stall for stall in self.stalls if not stall.beside]
        self.end_stalls(None)
        return carried

    def _release(self, state: _FaultState, ranks: list[int], extra: dict | None = None) -> None:
        """Releases the ranks held for the fault; `extra` (Action.release_message) is merged into the release."""
        for r in ranks:
            rank = self.ranks[r]
            if rank.held.pop(state.fault.id, None) is not None:
                rank.connection.send({"type": "release", "fault_id": state.fault.id, **(extra or {})})

    def _agents_taken_with(self, fault: PlannedFault) -> list[TrackedProcess]:
        """A host dying or stalling takes its torchrun agent too: SIGKILL, a pause or a node loss on a node (or
        all) also hits every agent whose ranks are all in the target."""
        if self.ctx.launcher not in ELASTIC or not fault.action.takes_host or fault.target.kind not in ("node", "all"):
            return []
        # Which ranks an agent runs is what their hellos proved (rendezvous may give agent n any group
        # rank), not n * ranks_per_node onwards. An agent is taken only when all of its ranks are known
        # and targeted, so a rank outside the target never dies with it.
        targets = set(fault.target.ranks)
        dying = []
        for agent in self.table.launched:
            if agent.role != "agent" or agent.exited:
                continue
            ranks = {r for r, process in self.table.ranks.items() if process.node == agent.node}
            if len(ranks) == self.spec.ranks_per_node and ranks <= targets:
                dying.append(agent)
        return dying

    def record_missed(self, end: str | None) -> None:
        """fault_missed for each fault not landed on all of its ranks; `end`: how the attempt ended."""
        for state in self.faults.values():
            fault = state.fault
            if state.landed_ranks >= set(fault.target.ranks):
                continue
            never = sorted(set(fault.target.ranks) - state.landed_ranks - set(state.missed_ranks))
            reasons = [f"rank {r}: {why}" for r, why in sorted(state.missed_ranks.items())]
            if never:
                where = (f"step {fault.trigger.step} phase {fault.trigger.phase}" if fault.trigger.phase
                         else f"{fault.trigger.after_s}s after launch")
                reasons.append(f"rank(s) {never} never reached {where} in attempt {self.number} "
                               f"(the attempt ended '{end}')")
            self.ctx.missed.append(self.ctx.record(
                history.FAULT_MISSED, fault_id=fault.id, attempt=self.number,
                landed_ranks=sorted(state.landed_ranks), reason="; ".join(reasons)))

