"""The nemesis: how a planned fault is done. One small module per action kind, one registry entry each.

Every action has the same shape, ``execute(action, context) -> dict``: it does the damage and returns the
facts the supervisor records (which pids got which signal, which file was corrupted how). *When* a fault
happens is the schedule's and the probe's business; *whom* it may touch is the supervisor's (it passes
only processes it launched and verified).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from chaos.faults import corrupt, node_loss, partition, pause, signals, straggler
from chaos.plan import Action


@dataclass
class FaultContext:
    targets: list = field(default_factory=list)
    """chaos.ownership.processes.TrackedProcess of the target ranks (verified, alive when planned)."""
    checkpoint_dir: Path | None = None
    cgroup_name: str | None = None
    """A name of this run's own for a cgroup the action makes (a straggler's): chaos-<run token>-..."""
    hosts: object | None = None
    """chaos.supervisor.hosts.netns.SimulatedHosts, where the scenario has them (a partition cuts a node's link)."""
    node: int | None = None
    """The target node, for a fault that acts on a whole node (a partition, a node loss)."""


ActionFunction = Callable[[Action, FaultContext], dict]
ACTIONS: dict[str, ActionFunction] = {}


def register(kind: str, function: ActionFunction) -> None:
    """Adds an action kind; two modules claiming one kind is a programming error, not a silent override."""
    if kind in ACTIONS:
        raise ValueError(f"fault action {kind!r} is already registered by {ACTIONS[kind].__module__}")
    ACTIONS[kind] = function


def execute(action: Action, context: FaultContext) -> dict:
    try:
        function = ACTIONS[action.kind]
    except KeyError:
        raise ValueError(f"unknown fault action {action.kind!r}; expected one of {sorted(ACTIONS)}") from None
    return function(action, context)


register("signal", signals.execute)
register("corrupt", corrupt.execute)
register("pause", pause.execute)
register("straggler", straggler.execute)
register("partition", partition.execute)
register("node_loss", node_loss.execute)
