"""A new fault kind is one module plus one registry line: a kind defined here (as a user's module would be)
and registered is read from a scenario, planned, written to plan.json and back, dumped to YAML and back,
and landed by the supervisor on a real rank process, with nothing else in chaos told about it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from chaos import faults
from chaos.faults import Action, FaultContext, Started
from chaos.plan import PlannedFault, Target, Trigger


# ---- the whole of the new kind ------------------------------------------------------------------------
@dataclass(frozen=True)
class Nudge(Action):
    """SIGCONT to the target ranks: a signal a running process ignores, so the job goes on."""

    kind = "nudge"
    times: int = 1

    @classmethod
    def from_yaml(cls, read: Any, value: Any, where: str) -> "Nudge":
        return cls(read.integer(value, where, low=1, high=3))

    def to_yaml(self) -> Any:
        return self.times

    def describe(self) -> str:
        return f"nudge x{self.times}"

    def start(self, context: FaultContext) -> Started:
        delivered = [p.pid for p in context.targets if all(p.send("SIGCONT") for _ in range(self.times))]
        return Started(delivered, signal="SIGCONT", landed={"times": self.times})


@pytest.fixture
def nudge_registered():
    faults.register(Nudge)  # the one registry line
    try:
        yield
    finally:
        del faults.KINDS["nudge"]


SCENARIO = """\
workload: {preset: tiny_cpu, world_size: 2, tensor_parallel: 2, train_iters: 6, save_interval: 3}
faults:
  - at: {step: 4, phase: forward}
    target: {rank: 1}
    nudge: 2
"""


def test_a_new_kind_goes_through_the_scenario_the_plan_and_back(nudge_registered):
    from chaos.scenario import dump_scenario, load_scenario_text
    from chaos.schedule import plan_faults, plan_from_json, plan_to_json

    scenario = load_scenario_text(SCENARIO, "nudge.yaml")
    [planned] = plan_faults(scenario)
    assert planned.action == Nudge(2) and planned.describe().endswith("rank 1: nudge x2 (scenario)")
    assert plan_from_json(plan_to_json([planned])) == (planned,)
    assert load_scenario_text(dump_scenario(scenario), "again.yaml").faults == scenario.faults


def test_a_new_kinds_own_validation_names_the_field(nudge_registered):
    from chaos.errors import InputError
    from chaos.scenario import load_scenario_text

    with pytest.raises(InputError, match=r"faults\[0\]\.nudge") as caught:
        load_scenario_text(SCENARIO.replace("nudge: 2", "nudge: 9"), "nudge.yaml")
    assert "3" in str(caught.value)


def test_an_unregistered_kind_is_an_unknown_key_with_the_known_ones_listed():
    from chaos.errors import InputError
    from chaos.scenario import load_scenario_text

    with pytest.raises(InputError, match="nudge") as caught:
        load_scenario_text(SCENARIO, "nudge.yaml")
    assert "signal" in str(caught.value)


def test_the_supervisor_lands_a_new_kind_and_the_job_goes_on(tmp_path, nudge_registered):
    from test_supervisor import events, make_config

    from chaos.supervisor import supervise

    planned = PlannedFault("f1", Trigger(step=4, phase="forward"), Target("rank", (1,)), Nudge(2))
    outcome = supervise(make_config(tmp_path / "run", [planned], train_iters=6))
    assert (outcome.outcome, outcome.attempts) == ("complete", 1)
    [landed] = events(tmp_path / "run", "fault_landed")
    assert (landed["action"], landed["signal"], landed["times"], landed["step"]) == ("nudge", "SIGCONT", 2, 4)
