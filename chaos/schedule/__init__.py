"""The schedule: *when* faults happen, every part of it in one place.

- specs: faults as a scenario writes them (TargetSpec, ScriptedFault, RandomFaults, FaultSpec);
  chaos.scenario builds and validates them and re-exports them.
- points: the candidate (step, phases) points of a workload, and the seeded draws of a phase and an MTBF gap.
- planner: plan_faults, a scenario's specs -> concrete chaos.plan.PlannedFault objects from one seed.
- plan_json: plan.json (plan_to_json, plan_from_json) for the run directory and replay.
- soak_draws: the explicit faults a soak cycle draws from its seed (random_faults, ScheduleOptions).

Pure functions, no I/O. chaos.schedule imports neither chaos.scenario nor chaos.soak (both import it): the
planner and the soak's draws take the scenario as a small Protocol. When a fault fires is chaos.plan.Trigger,
which stays with chaos.plan.PlannedFault, the supervisor's input, whose field it is.
"""

from chaos.schedule.plan_json import PLAN_FORMAT, plan_from_json, plan_to_json
from chaos.schedule.planner import PlannableScenario, plan_faults
from chaos.schedule.points import candidate_points, draw_phase, mtbf_gap_s
from chaos.schedule.soak_draws import (
    DEFAULT_SIGNALS, NODE_TARGET_PROBABILITY, DrawableScenario, ScheduleOptions, random_faults, soak_phases,
)
from chaos.schedule.specs import FaultSpec, RandomFaults, ScriptedFault, TargetSpec

__all__ = [
    "DEFAULT_SIGNALS", "NODE_TARGET_PROBABILITY", "PLAN_FORMAT", "DrawableScenario", "FaultSpec", "PlannableScenario",
    "RandomFaults", "ScheduleOptions", "ScriptedFault", "TargetSpec", "candidate_points", "draw_phase", "mtbf_gap_s",
    "plan_faults", "plan_from_json", "plan_to_json", "random_faults", "soak_phases",
]
