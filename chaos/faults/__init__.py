"""The nemesis: what a planned fault does, one module per kind (chaos.faults.kind says what a kind is), and the
registry below, one line each. Nothing outside this package branches over the kinds: the scenario reader,
plan.json, the supervisor and the checks go through `KINDS` and the kind's own class.
"""

from __future__ import annotations

from typing import Any, Mapping

from chaos.faults.corrupt import Corrupt
from chaos.faults.exception import Raise
from chaos.faults.kind import Action, FaultContext, Started
from chaos.faults.node_loss import NodeLoss
from chaos.faults.partition import Partition
from chaos.faults.pause import Pause
from chaos.faults.signals import Signal
from chaos.faults.straggler import Straggler

KINDS: dict[str, type[Action]] = {}
"""Kind name -> its class, in the order a scenario's error messages list them."""


def register(cls: type[Action]) -> None:
    """Adds a fault kind; two classes claiming one kind is a programming error, not a silent override."""
    if cls.kind in KINDS:
        raise ValueError(f"fault kind {cls.kind!r} is already registered by {KINDS[cls.kind].__module__}")
    KINDS[cls.kind] = cls


register(Signal)
register(Corrupt)
register(Pause)
register(Straggler)
register(Partition)
register(NodeLoss)
register(Raise)


def kind_of(name: str) -> type[Action]:
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"unknown fault kind {name!r}; expected one of {sorted(KINDS)}") from None


def action_from_dict(data: Mapping[str, Any]) -> Action:
    """An action as plan.json holds it (`{"kind": "pause", "duration_s": 5}`). Plans written before each kind
    had its own class carry every kind's fields, the others null: those are dropped."""
    cls = kind_of(str(data["kind"]))
    names = set(cls.__dataclass_fields__)
    params = {key: value for key, value in data.items() if key != "kind" and (key in names or value is not None)}
    return cls(**params)


__all__ = ["KINDS", "Action", "FaultContext", "Started", "action_from_dict", "kind_of", "register"]
