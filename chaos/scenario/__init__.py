"""Scenarios: YAML files that say which workload to run, which faults to inject, and what to check.

    from chaos.scenario import load_scenario
    scenario = load_scenario("scenarios/node_kill.yaml")

`model` holds the typed, frozen objects (the fault specifications among them come from chaos.schedule.specs,
re-exported here); `yaml_text` reads a file as untrusted YAML; `load` turns it into them (every error an
InputError naming file, field path and expectation) and applies overrides (`overrides`: dotted keys); `dump`
turns them back into plain data (scenario_to_mapping).
"""

from chaos.scenario.dump import dump_scenario, scenario_to_mapping
from chaos.scenario.load import apply_overrides, load_scenario, load_scenario_mapping, load_scenario_text
from chaos.scenario.overrides import parse_overrides
from chaos.scenario.yaml_text import parse_yaml
from chaos.scenario.model import CHECK_NAMES, GOLDEN_MODES, LAUNCHERS, GoldenSpec, Scenario
from chaos.schedule.specs import FaultSpec, RandomFaults, ScriptedFault, TargetSpec

__all__ = [
    "CHECK_NAMES", "GOLDEN_MODES", "LAUNCHERS", "FaultSpec", "GoldenSpec", "RandomFaults", "Scenario",
    "ScriptedFault", "TargetSpec", "apply_overrides", "dump_scenario", "load_scenario", "load_scenario_mapping",
    "load_scenario_text", "parse_overrides", "parse_yaml", "scenario_to_mapping",
]
