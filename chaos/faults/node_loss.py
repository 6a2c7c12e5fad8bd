"""Node loss: a host dies at once (power, kernel panic, a preempted VM) and comes back blank. Every process in
the node's namespaces gets SIGKILL at the same moment (its ranks, its torchrun agent, whatever they
started), and once they are gone its node-local disk is emptied (chaos.supervisor.hosts.netns): whatever the job
kept only there is lost with it.

The check that judges it is `node_loss` (with `resume_point`): no later attempt may resume from a
checkpoint that had files on the lost disk, the ranks must agree on where they resume, and the job must
come back. A job that saves checkpoints to node-local storage without replicating them is caught there.

    hosts: netns
    faults:
      - at: {step: 5, phase: forward}
        target: {node: 1}
        node_loss: true
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from chaos import history
from chaos.checkpoint_layout import iterations_in
from chaos.faults.kind import Action, FaultContext, Started

LISTED_FILES = 50
"""The lost disk's files named in the history (their count and bytes are always complete)."""


@dataclass(frozen=True)
class NodeLoss(Action):
    kind = "node_loss"
    ends_attempt = True
    interrupts = True
    takes_host = True
    sends_signal = "SIGKILL"
    changes_host = True
    host_needs = "a local disk and processes of its own"

    @classmethod
    def from_yaml(cls, read: Any, value: Any, where: str) -> "NodeLoss":
        if value is not True:
            raise read.error(where, f"expected true (the target node's processes and its local disk are lost), "
                                    f"got {value!r}")
        return cls()

    def to_yaml(self) -> Any:
        return True

    def describe(self) -> str:
        return "node_loss"

    def start(self, context: FaultContext) -> Started:
        if context.hosts is None or context.node is None:
            raise ValueError("a node loss needs simulated hosts (hosts: netns) and a target node")
        # the tracked processes first, through their pidfds (so the supervisor knows what it sent them), then
        # every other process of the node; the disk goes only once they are all gone
        delivered = [p.pid for p in context.targets if p.send("SIGKILL")]
        lost = context.hosts.lose(context.node)
        facts = asdict(lost)
        files = facts.pop("files")
        event = {"node": context.node, "delivered": delivered, **facts, "files": len(files),
                 "listed": files[:LISTED_FILES], "iterations": iterations_in(files)}
        return Started(delivered, signal="SIGKILL", event=(history.NODE_LOST, event))
