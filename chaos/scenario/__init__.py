"""Scenarios: YAML files that say which workload to run, which faults to inject, and what to check.

    from chaos.scenario import load_scenario
    scenario = load_scenario("scenarios/node_kill.yaml")

`model` holds the typed, frozen objects; `load` turns YAML into them (every error an InputError naming
file, field path and expectation) and back (scenario_to_mapping), and applies CLI-style overrides.
"""

from chaos.scenario.load import (
    apply_overrides, dump_scenario, load_scenario, load_scenario_mapping, load_scenario_text, parse_overrides,
    parse_yaml, scenario_to_mapping,
)
from chaos.scenario.model import (
    CHECK_NAMES, GOLDEN_MODES, LAUNCHERS, FaultSpec, GoldenSpec, RandomFaults, Scenario, ScriptedFault, TargetSpec,
)

__all__ = [
    "CHECK_NAMES", "GOLDEN_MODES", "LAUNCHERS", "FaultSpec", "GoldenSpec", "RandomFaults", "Scenario",
    "ScriptedFault", "TargetSpec", "apply_overrides", "dump_scenario", "load_scenario", "load_scenario_mapping",
    "load_scenario_text", "parse_overrides", "parse_yaml", "scenario_to_mapping",
]
