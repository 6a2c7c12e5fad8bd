"""Partition faults: a node's network link is cut for `duration_s` seconds (only with `hosts: netns`, where
each node has one: chaos.supervisor.hosts.netns). Every packet to or from the node is dropped meanwhile; its
processes keep running, their sockets stay open, and TCP retransmits once the link is back.

    hosts: netns
    faults:
      - at: {step: 4, phase: forward}
        target: {node: 1}
        partition: 5        # seconds the link stays cut

`start` cuts the link; `Cut.stop` heals it, which the supervisor calls when the duration is over, or when
the attempt ends (the hosts outlive attempts: the next one must find the network whole). Shorter than
hang_timeout_s the job must ride it out (the `stalls` check); longer, every collective waits on the cut
node and hang detection tears the attempt down.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chaos.faults.kind import MAX_STALL_S, Action, FaultContext, Started


@dataclass(frozen=True)
class Partition(Action):
    kind = "partition"
    takes_host = True
    stall = True
    halts = True
    changes_host = True
    host_needs = "a network link"
    duration_s: float
    """Seconds the node's link stays cut."""

    @classmethod
    def from_yaml(cls, read: Any, value: Any, where: str) -> "Partition":
        seconds = read.number(value, where, strict=True)
        if seconds > MAX_STALL_S:
            raise read.error(where, f"expected seconds <= {MAX_STALL_S:g}, got {seconds:g}")
        return cls(seconds)

    def to_yaml(self) -> Any:
        return self.duration_s

    def describe(self) -> str:
        return f"partition {self.duration_s:g}s"

    def start(self, context: FaultContext) -> "Cut":
        if self.duration_s is None or context.hosts is None or context.node is None:
            raise ValueError("a partition needs duration_s, simulated hosts (hosts: netns) and a target node")
        context.hosts.cut(context.node)
        return Cut([p.pid for p in context.targets if p.alive()], landed={"duration_s": self.duration_s},
                   hosts=context.hosts, node=context.node)


@dataclass
class Cut(Started):
    hosts: Any = None
    node: int = 0

    def stop(self, ran_its_course: bool) -> dict[str, Any]:
        self.hosts.heal(self.node)
        return {"node": self.node}
