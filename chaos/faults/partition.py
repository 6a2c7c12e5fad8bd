"""Partition faults: a node's network link is cut for `duration_s` seconds (only with `hosts: netns`, where
each node has one: chaos.supervisor.hosts.netns). Every packet to or from the node is dropped meanwhile; its
processes keep running, their sockets stay open, and TCP retransmits once the link is back.

The cut is made here; the returned `undo` heals the link, which the supervisor calls when the duration is
over, or when the attempt ends (the hosts outlive attempts: the next one must find the network whole). Shorter than
hang_timeout_s the job must ride it out (the `stalls` check); longer, every collective waits on the cut
node and hang detection tears the attempt down.
"""

from __future__ import annotations

from chaos.plan import Action


def execute(action: Action, context) -> dict:
    if action.duration_s is None or context.hosts is None or context.node is None:
        raise ValueError("a partition needs action.duration_s, simulated hosts (hosts: netns) and a target node")
    hosts, node = context.hosts, context.node
    hosts.cut(node)

    def undo(ran_its_course: bool) -> dict:
        hosts.heal(node)
        return {"node": node}

    return {"delivered": [p.pid for p in context.targets if p.alive()], "node": node,
            "duration_s": action.duration_s, "undo": undo}
