"""Signal faults: deliver a real signal to a rank process from outside, the way a kernel OOM-kill, a
scheduler preemption (SIGTERM) or a stuck host (SIGSTOP, Jepsen's "hammer time") would.

    faults:
      - at: {step: 3, phase: backward}
        target: {rank: 1}
        signal: SIGKILL

A signal that kills by default (SIGKILL, SIGSEGV, SIGABRT) ends the attempt: the supervisor waits for the
target's death. Others (SIGTERM, SIGINT) leave it to the job, which may save and exit or ignore them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chaos.faults.kind import Action, FaultContext, Started
from chaos.ownership.processes import FATAL_BY_DEFAULT

SIGNALS = ("SIGKILL", "SIGTERM", "SIGINT", "SIGSEGV", "SIGABRT", "SIGSTOP")


@dataclass(frozen=True)
class Signal(Action):
    kind = "signal"
    interrupts = True
    signal: str
    """One of SIGNALS."""

    @property
    def ends_attempt(self) -> bool:
        return self.signal in FATAL_BY_DEFAULT

    @property
    def takes_host(self) -> bool:
        return self.signal == "SIGKILL"  # a host that dies takes its launcher along; a SIGTERM is for the ranks

    @property
    def sends_signal(self) -> str | None:
        return self.signal

    @classmethod
    def from_yaml(cls, read: Any, value: Any, where: str) -> "Signal":
        return cls(read.choice(value, where, SIGNALS))

    def to_yaml(self) -> Any:
        return self.signal

    def describe(self) -> str:
        return self.signal

    def start(self, context: FaultContext) -> Started:
        """Sends the signal to each target (through its pidfd, or after the PID-reuse guard)."""
        return Started([p.pid for p in context.targets if p.send(self.signal)], signal=self.signal)
