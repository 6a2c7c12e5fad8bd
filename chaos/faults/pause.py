"""Pause faults (Jepsen's pause nemesis): SIGSTOP now, SIGCONT `duration_s` later, to a rank or to every
rank of a node, the way a host stalls (a hypervisor steal, a swap storm, a frozen NFS mount) and comes back.

    faults:
      - at: {step: 4, phase: forward}
        target: {node: 1}
        pause: 5            # seconds between the SIGSTOP and the SIGCONT

`start` delivers the stop; `Paused.stop` sends the SIGCONT, which the supervisor calls from its loop when
the duration is over, so the wait never blocks it. A pause is not excused from hang detection: to the
other ranks a paused one looks exactly like a hung one. Shorter than hang_timeout_s the job must ride it
out (the `stalls` check); longer, the supervisor's hang detection tears the attempt down (a stopped
process is SIGKILLed at once) and the run resumes like after any hang.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from chaos.faults.kind import MAX_STALL_S, Action, FaultContext, Started


@dataclass(frozen=True)
class Pause(Action):
    kind = "pause"
    takes_host = True
    stall = True
    halts = True
    sends_signal = "SIGSTOP"
    duration_s: float
    """Seconds between the SIGSTOP and the SIGCONT."""

    @classmethod
    def from_yaml(cls, read: Any, value: Any, where: str) -> "Pause":
        seconds = read.number(value, where, strict=True)
        if seconds > MAX_STALL_S:
            raise read.error(where, f"expected seconds <= {MAX_STALL_S:g} (SIGSTOP, then SIGCONT that many "
                                    f"seconds later), got {seconds:g}")
        return cls(seconds)

    def to_yaml(self) -> Any:
        return self.duration_s

    def describe(self) -> str:
        return f"pause {self.duration_s:g}s"

    def start(self, context: FaultContext) -> "Paused":
        if self.duration_s is None or self.duration_s <= 0:
            raise ValueError("a pause fault needs duration_s > 0")
        paused = [p for p in context.targets if p.send("SIGSTOP")]
        return Paused([p.pid for p in paused], signal="SIGSTOP", landed={"duration_s": self.duration_s},
                      processes=paused)


@dataclass
class Paused(Started):
    processes: list = field(default_factory=list)

    def stop(self, ran_its_course: bool) -> dict[str, Any]:
        # cut short, the attempt is over: the teardown has killed the stopped processes, nothing to continue
        return {"resumed": resume(self.processes) if ran_its_course else []}


def resume(processes) -> list[int]:
    """SIGCONT to each paused process still there; the pids that got it."""
    return [p.pid for p in processes if p.send("SIGCONT")]
