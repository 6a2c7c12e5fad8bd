"""A scenario back to plain data (scenario.yaml in a run directory, the soak shrinker's candidates): the shortest
explicit form that chaos.scenario.load reads back to the same scenario."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Mapping

import yaml

from chaos.scenario.model import CHECK_NAMES, Scenario
from chaos.schedule.specs import FaultSpec, RandomFaults

def scenario_to_mapping(scenario: Scenario) -> dict[str, Any]:
    """The scenario as plain data in its shortest explicit form: load_scenario_mapping(result) == scenario.
    The golden path is written absolute, so the mapping stays valid wherever it is saved."""
    out: dict[str, Any] = {"name": scenario.name}
    if scenario.description:
        out["description"] = scenario.description
    out["seed"] = scenario.seed
    out["workload"] = _plain(scenario.workload.scenario_mapping(scenario.workload_mapping))
    out["launcher"] = scenario.launcher
    if scenario.launcher_args:
        out["launcher_args"] = list(scenario.launcher_args)
    if scenario.hosts != "local":
        out["hosts"] = scenario.hosts
    out["restart"] = {**asdict(scenario.restart), "warm": "auto" if scenario.restart.warm is None
                      else scenario.restart.warm}
    out["faults"] = [_fault_to_mapping(fault) for fault in scenario.faults]
    golden: dict[str, Any] = {}
    if scenario.golden.path is not None:
        golden["path"] = str(scenario.golden.path)
    if scenario.golden.mode is not None:
        golden["mode"] = scenario.golden.mode
    if scenario.golden.repeats is not None:
        golden["repeats"] = scenario.golden.repeats
    if golden:
        out["golden"] = golden
    if scenario.tolerance:
        out["tolerance"] = dict(scenario.tolerance)
    if scenario.accepted_state_differences:
        out["accept_state_differences"] = dict(scenario.accepted_state_differences)
    out["checks"] = "all" if set(scenario.checks) == set(CHECK_NAMES) else list(scenario.checks)
    return out


def dump_scenario(scenario: Scenario) -> str:
    """YAML text of scenario_to_mapping (what the soak shrinker writes)."""
    return yaml.safe_dump(scenario_to_mapping(scenario), sort_keys=False, default_flow_style=None)


def _fault_to_mapping(fault: FaultSpec) -> dict[str, Any]:
    if isinstance(fault, RandomFaults):
        entry: dict[str, Any] = {}
        if fault.count is not None:
            entry["count"] = fault.count
        if fault.steps is not None:
            entry["steps"] = list(fault.steps)
        if fault.phases:
            entry["phases"] = list(fault.phases)
        if fault.ranks:
            entry["ranks"] = list(fault.ranks)
        entry["signals"] = list(fault.signals)
        if fault.attempt != 1:
            entry["attempt"] = fault.attempt
        if fault.mtbf_s is not None:
            entry["mtbf_s"] = fault.mtbf_s
        if fault.until_s is not None:
            entry["until_s"] = fault.until_s
        return {"random": entry}
    trigger = {key: val for key, val in asdict(fault.trigger).items() if val is not None}
    if trigger.get("attempt") == 1:
        del trigger["attempt"]
    target: Any
    kind = fault.target.kind
    if kind == "rank":
        target = {"rank": fault.target.ranks[0]}
    elif kind == "ranks":
        target = {"ranks": list(fault.target.ranks)}
    elif kind == "node":
        target = {"node": fault.target.node}
    elif kind == "random" and fault.target.count != 1:
        target = {"random": fault.target.count}
    else:
        target = kind
    if fault.target.process != "rank":
        target = {**target, "process": fault.target.process}
    out: dict[str, Any] = {"at": trigger, "target": target}
    out[fault.action.kind] = fault.action.to_yaml()
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _plain(val) for key, val in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(val) for val in value]
    return value
