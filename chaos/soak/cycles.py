"""What each soak cycle runs: the scenario with a seeded random schedule of its own, validated again.

A cycle's schedule depends on nothing but its seed (base seed + cycle index), so any cycle can be planned
again without running it. A scenario that already has `random:` entries keeps them (chaos.schedule plans
them from the cycle's seed); otherwise its faults are replaced by explicit faults drawn from the seed
(chaos.schedule.soak_draws). What lives here needs chaos.scenario (re-loading a scenario), which
chaos.schedule may not import.
"""

from __future__ import annotations

import dataclasses

from chaos.scenario import RandomFaults, Scenario, load_scenario_mapping, scenario_to_mapping
from chaos.schedule.soak_draws import ScheduleOptions, random_faults


def has_random_entries(scenario: Scenario) -> bool:
    return any(isinstance(fault, RandomFaults) for fault in scenario.faults)


def cycle_scenario(base: Scenario, cycle: int, seed: int, options: ScheduleOptions = ScheduleOptions()) -> Scenario:
    """The scenario cycle `cycle` runs, validated again from scratch (a drawn schedule that the scenario
    rules reject is a bug here, and says so as an InputError)."""
    faults = base.faults if has_random_entries(base) else random_faults(base, seed, options)
    drawn = dataclasses.replace(base, name=f"{base.name}-cycle-{cycle:03d}", seed=seed, faults=tuple(faults))
    return revalidate(drawn, f"{base.source} (soak cycle {cycle}, seed {seed})")


def revalidate(scenario: Scenario, source: str) -> Scenario:
    return load_scenario_mapping(scenario_to_mapping(scenario), source, scenario.base_dir)
