"""The schedule is pure: plans are simulated here without a cluster, for many seeds."""

from __future__ import annotations

import json

import pytest

from chaos.errors import InputError
from chaos.faults.signals import Signal
from chaos.plan import PlannedFault, Target, Trigger
from chaos.scenario import load_scenario_text
from chaos.probe import SAVE_PHASES
from chaos.schedule import plan_faults, plan_from_json, plan_to_json

WORKLOAD = ("workload: {preset: tiny_cpu, world_size: 4, tensor_parallel: 2, nodes: 2, train_iters: 12, "
            "save_interval: 4}\n")


def scenario(body: str):
    return load_scenario_text(WORKLOAD + body, "test.yaml")


RANDOM = scenario("restart: {max_restarts: 6}\nfaults:\n"
                  "  - random: {count: 3, steps: [2, 10], phases: [forward, backward, checkpoint.shard],"
                  " ranks: [0, 2, 3], signals: [SIGKILL, SIGTERM]}\n")


def test_scripted_faults_keep_file_order_and_resolve_targets():
    plan = plan_faults(scenario(
        "faults:\n"
        "  - {at: {step: 3, phase: backward}, target: {rank: 1}, signal: SIGKILL}\n"
        "  - {at: {step: 6, phase: forward, attempt: 2}, target: {node: 1}, signal: SIGKILL}\n"
        "  - {at: {step: 9, phase: forward, attempt: 3}, target: all, signal: SIGTERM}\n"
        "  - {at: {after_s: 4.5, attempt: 4}, target: {ranks: [0, 3]}, corrupt: flip}\n"))
    assert [fault.id for fault in plan] == ["f1", "f2", "f3", "f4"]
    assert plan[0] == PlannedFault("f1", Trigger(step=3, phase="backward"), Target("rank", (1,)),
                                   Signal("SIGKILL"), origin="scenario")
    assert plan[1].target == Target("node", (2, 3), node=1)
    assert plan[2].target == Target("all", (0, 1, 2, 3))
    assert plan[3].trigger == Trigger(attempt=4, after_s=4.5) and plan[3].target.ranks == (0, 3)
    assert {fault.origin for fault in plan} == {"scenario"}


def test_same_seed_same_plan_and_seed_argument_overrides():
    assert plan_faults(RANDOM) == plan_faults(RANDOM)
    assert plan_faults(RANDOM, seed=5) == plan_faults(RANDOM, seed=5)
    assert plan_faults(RANDOM, seed=0) == plan_faults(RANDOM)  # scenario seed defaults to 0
    assert plan_faults(RANDOM, seed=5)[0].origin == "random(seed=5)"


def test_different_seeds_give_different_plans():
    plans = {plan_faults(RANDOM, seed=seed) for seed in range(20)}
    assert len(plans) > 10
    assert plan_faults(RANDOM, seed=1) != plan_faults(RANDOM, seed=2)


@pytest.mark.parametrize("seed", range(200))
def test_random_step_faults_respect_their_bounds(seed):
    plan = plan_faults(RANDOM, seed=seed)
    assert [fault.id for fault in plan] == ["f1", "f2", "f3"]
    steps = [fault.trigger.step for fault in plan]
    assert steps == sorted(set(steps)), "distinct and sorted"
    assert all(2 <= step <= 10 for step in steps)
    assert [fault.trigger.attempt for fault in plan] == [1, 2, 3], "each fault ends its attempt"
    for fault in plan:
        assert fault.trigger.phase in ("forward", "backward", "checkpoint.shard")
        if fault.trigger.phase in SAVE_PHASES:
            assert fault.trigger.step % 4 == 0, "checkpoint phases only at saving steps"
            assert 1 <= fault.trigger.index <= 2
        else:
            assert fault.trigger.index is None
        assert fault.target.kind == "rank" and fault.target.ranks[0] in (0, 2, 3)
        assert fault.action.signal in ("SIGKILL", "SIGTERM")


@pytest.mark.parametrize("seed", range(50))
def test_no_fault_is_planned_past_train_iters(seed):
    plan = plan_faults(scenario("restart: {max_restarts: 12}\nfaults:\n"
                                "  - random: {count: 11, steps: [2, 40]}\n"), seed=seed)
    assert [fault.trigger.step for fault in plan] == list(range(2, 13))
    only_saves = plan_faults(scenario("faults:\n  - random: {count: 3, phases: [checkpoint.tracker]}\n"), seed=seed)
    assert [fault.trigger.step for fault in only_saves] == [4, 8, 12]


def test_random_entries_are_independent_streams():
    base = "restart: {max_restarts: 8}\nfaults:\n  - random: {count: 2, steps: [1, 6]}\n"
    second = "  - random: {count: 2, steps: [7, 12], attempt: 3}\n"
    alone = plan_faults(scenario(base), seed=3)
    both = plan_faults(scenario(base + second), seed=3)
    assert both[:2] == alone
    edited = plan_faults(scenario(base.replace("count: 2, steps: [1, 6]", "count: 1, steps: [1, 6]") + second), seed=3)
    assert [f.trigger for f in edited[1:]] == [f.trigger for f in both[2:]]


@pytest.mark.parametrize("seed", range(50))
def test_mtbf_plans_wall_clock_faults(seed):
    plan = plan_faults(scenario("faults:\n  - random: {mtbf_s: 30, signals: [SIGKILL, SIGSTOP], until_s: 120}\n"),
                       seed=seed)
    assert len(plan) <= 5  # the default cap: max_restarts
    assert [fault.trigger.attempt for fault in plan] == list(range(1, len(plan) + 1))
    assert sum(fault.trigger.after_s for fault in plan) <= 120
    for fault in plan:
        assert fault.trigger.phase is None and fault.trigger.step is None and fault.trigger.after_s > 0
        assert fault.action.signal in ("SIGKILL", "SIGSTOP")


def test_mtbf_averages_its_mean():
    entry = scenario("restart: {max_restarts: 400}\nfaults:\n  - random: {mtbf_s: 10, count: 400}\n")
    gaps = [fault.trigger.after_s for fault in plan_faults(entry, seed=1)]
    assert len(gaps) == 400
    assert 8.5 < sum(gaps) / len(gaps) < 11.5


def test_random_target_is_seeded():
    spec = scenario("faults:\n  - {at: {step: 2, phase: data}, target: {random: 2}, signal: SIGKILL}\n")
    plans = {plan_faults(spec, seed=seed)[0].target for seed in range(30)}
    assert all(target.kind == "ranks" and len(set(target.ranks)) == 2 for target in plans)
    assert len(plans) > 1
    assert plan_faults(spec, seed=4)[0].origin == "random(seed=4)"


def test_plan_json_round_trip():
    plan = plan_faults(RANDOM, seed=9) + plan_faults(scenario(
        "faults:\n  - {at: {after_s: 2.0}, target: {node: 0}, corrupt: truncate}\n"))
    text = plan_to_json(plan)
    assert json.loads(text)["format"] == "chaos-plan/1"
    assert plan_from_json(text) == plan
    assert plan_from_json(json.loads(text)) == plan
    assert plan_from_json(json.loads(text)["faults"]) == plan
    assert plan_from_json(plan_to_json(())) == ()


@pytest.mark.parametrize("text, field", [
    ("{not json", "line 1"),
    ('{"format": "chaos-plan/9", "faults": []}', "format"),
    ('{"faults": {}}', "faults"),
    ('{"faults": [{"id": "f1"}]}', "faults[0]"),
])
def test_damaged_plan_json_is_an_input_error(text, field):
    with pytest.raises(InputError) as caught:
        plan_from_json(text, source="run/plan.json")
    assert caught.value.source == "run/plan.json" and caught.value.field == field

