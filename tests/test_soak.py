"""The soak: seeded schedules, shrinking, statistics and resume with a fake runner (pure, fast), and two
real soaks on the 2-rank workload: a correct trainer (coverage matrix), a broken one (minimal reproducer)."""

from __future__ import annotations

import json
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from chaos import cli
from chaos.errors import InputError
from chaos.faults.signals import Signal
from chaos.plan import PlannedFault, Target, Trigger
from chaos.scenario import load_scenario, load_scenario_text
from chaos.schedule import ScheduleOptions, plan_faults, plan_to_json
from chaos.soak import SoakOptions, cycle_scenario, parse_duration, read_state, run_soak, shrink
from chaos.probe import COORDINATOR_PHASES
from chaos.soak.stats import coverage_matrix, percentile, restart_statistics
from workload_runs import small_workload



def write_scenario(directory: Path, extra_workload: str = "", faults: str = "") -> Path:
    path = directory / "soak_small.yaml"
    path.write_text(f"workload: {small_workload(extra_workload)}\nrestart: {{max_restarts: 3}}\n{faults}")
    return path


class FakeRunner:
    """Stands in for chaos.runner.run_scenario: writes plan.json and a report.json in which every planned
    fault landed; `fails(plan)` decides the verdict. Counts its calls; `die_at` raises on that call."""

    def __init__(self, fails=lambda plan: False, die_at: int | None = None, interrupt_at: int | None = None):
        self.fails = fails
        self.die_at = die_at
        self.interrupt_at = interrupt_at  # that call's run is stopped by Ctrl-C/SIGTERM (the runner's partial report)
        self.calls: list[dict] = []

    def __call__(self, scenario, out_dir, seed, golden_cache, say=print):
        if self.die_at is not None and len(self.calls) == self.die_at:
            raise RuntimeError("the soak process was killed")
        plan = plan_faults(scenario, seed)
        self.calls.append({"name": scenario.name, "seed": seed, "plan": plan, "out_dir": Path(out_dir)})
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True)
        (out_dir / ".chaos-run").write_text("")  # as run_scenario marks every run directory first
        (out_dir / "plan.json").write_text(plan_to_json(plan))
        failing = self.fails(plan)
        if self.interrupt_at is not None and len(self.calls) - 1 == self.interrupt_at:
            report = {"verdict": "error", "checks": [], "faults": [], "timings": {}, "golden": {"path": None},
                      "extra": {"infrastructure_error": "interrupted (Ctrl-C or SIGTERM to chaos): partial report"}}
            (out_dir / "report.json").write_text(json.dumps(report))
            return SimpleNamespace(verdict="error", run_dir=out_dir, report=report)
        checks = [{"name": "trajectory", "status": "fail" if failing else "pass", "detail": "fake", "evidence": {}},
                  {"name": "steps_lost", "status": "pass", "detail": "fake",
                   "evidence": {"faults": [{"steps_lost": 1} for _ in plan]}}]
        report = {"verdict": "fail" if failing else "pass", "checks": checks,
                  "faults": [{"planned": f.to_dict(), "landed": {"phase": f.trigger.phase, "signal": f.action.signal,
                                                                "step": f.trigger.step}} for f in plan],
                  "timings": {"detection_latency_s": [{"latency_s": 0.02}], "teardown_duration_s": [{"duration_s": 1.0}],
                              "restart_to_first_resumed_step_s": [{"seconds": 3.0}]},
                  "golden": {"path": None}, "extra": {}}
        (out_dir / "report.json").write_text(json.dumps(report))
        return SimpleNamespace(verdict=report["verdict"], run_dir=out_dir, report=report)


def uses_signal(name):
    return lambda plan: any(f.action.signal == name for f in plan)


# ---- schedules --------------------------------------------------------------------------------------------
def test_cycle_schedules_depend_only_on_the_seed(tmp_path):
    base = load_scenario(write_scenario(tmp_path))
    first, again = cycle_scenario(base, 0, 41), cycle_scenario(base, 0, 41)
    assert first.faults == again.faults and first.seed == 41
    schedules = [plan_faults(cycle_scenario(base, i, 40 + i)) for i in range(30)]
    assert len({tuple((f.trigger, f.target, f.action) for f in plan) for plan in schedules}) > 10
    for plan in schedules:
        assert 1 <= len(plan) <= 2
        assert [f.trigger.attempt for f in plan] == list(range(1, len(plan) + 1))
        steps = [f.trigger.step for f in plan]
        assert steps == sorted(set(steps))  # strictly increasing: each reached after the previous restart
        for fault in plan:
            if fault.trigger.phase in COORDINATOR_PHASES:
                assert fault.target.ranks == (0,), fault  # only rank 0 passes these probe points


def test_random_entries_are_kept_and_nodes_can_be_targets(tmp_path):
    random_path = tmp_path / "random.yaml"
    random_path.write_text(f"workload: {small_workload()}\nrestart: {{max_restarts: 3}}\n"
                           "faults:\n  - random: {count: 2, signals: [SIGTERM]}\n")
    kept = cycle_scenario(load_scenario(random_path), 3, 103)
    assert kept.faults == load_scenario(random_path).faults and kept.seed == 103
    nodes = load_scenario_text("workload: {world_size: 4, tensor_parallel: 2, nodes: 2, train_iters: 6}\n"
                               "restart: {max_restarts: 2}\n", "nodes")
    kinds = {f.target.kind for i in range(40) for f in cycle_scenario(nodes, i, i).faults}
    assert kinds == {"rank", "node"}
    walls = cycle_scenario(nodes, 0, 7, ScheduleOptions(mtbf_s=5.0)).faults
    assert all(f.trigger.after_s and f.trigger.phase is None for f in walls)


def test_bad_soak_options_name_the_option(tmp_path):
    with pytest.raises(InputError, match="--signals"):
        ScheduleOptions(signals=("SIGKIL",))
    with pytest.raises(InputError, match="--cycles/--duration"):
        SoakOptions(scenario=tmp_path / "x.yaml", out=tmp_path)
    assert parse_duration("1h30m") == 5400 and parse_duration("8h") == 8 * 3600 and parse_duration("45s") == 45
    with pytest.raises(InputError, match="--duration"):
        parse_duration("8 hours")


# ---- shrinking (pure) -------------------------------------------------------------------------------------------
def fault(fid, step, phase, signal, attempt, ranks=(1,), kind="rank"):
    return PlannedFault(fid, Trigger(step=step, phase=phase, attempt=attempt), Target(kind, tuple(ranks)),
                        Signal(signal))


def test_shrink_finds_the_minimal_schedule_within_budget(tmp_path):
    scenario = load_scenario(write_scenario(tmp_path))
    original = (fault("f1", 2, "forward", "SIGTERM", 1), fault("f2", 5, "optimizer", "SIGSEGV", 2, (0, 1), "ranks"))
    seen = []

    def still_fails(plan, description):
        seen.append(plan)
        return any(f.action.signal == "SIGSEGV" for f in plan), "fake"

    outcome = shrink(original, scenario, still_fails, budget=10)
    (minimal,) = outcome.minimal
    assert minimal.action.signal == "SIGSEGV" and minimal.trigger.attempt == 1  # renumbered into attempt 1
    assert minimal.trigger.step == 1 and minimal.target.ranks == (0,)  # earliest step, one rank
    assert outcome.runs_used == len(seen) <= 10 and len({tuple(p) for p in seen}) == len(seen)

    few = shrink(original, scenario, still_fails, budget=1)  # the one candidate ("only f1") passes
    assert few.runs_used == 1 and not few.shrunk and len(few.minimal) == 2


def test_shrink_keeps_the_original_when_nothing_simpler_fails_and_skips_unrunnable(tmp_path):
    scenario = load_scenario(write_scenario(tmp_path))
    original = (fault("f1", 3, "backward", "SIGABRT", 1),)
    asked = []

    def only_original(plan, description):
        asked.append(description)
        if "earlier" in description:
            return None  # rejected by the scenario rules: costs nothing
        return False, "passes"

    outcome = shrink(original, scenario, only_original, budget=4)
    assert not outcome.shrunk and outcome.minimal[0].action.signal == "SIGABRT"
    assert outcome.runs_used == 1 and len(asked) == 2  # the SIGKILL candidate ran; "earlier" cost nothing


# ---- statistics ------------------------------------------------------------------------------------------------
def test_coverage_and_restart_statistics_tolerate_missing_keys():
    reports = [{"faults": [{"planned": {"action": {"signal": "SIGKILL"}}, "landed": {"phase": "backward", "signal": "SIGKILL"}},
                           {"planned": {"action": {"kind": "corrupt", "corrupt": "flip"}}, "landed": {"phase": None}},
                           {"planned": {}, "landed": None}],
                "timings": {"detection_latency_s": [{"latency_s": 0.1}, {"latency_s": None}]}},
               {}, {"faults": None, "timings": None, "checks": [{"name": "steps_lost", "evidence": {}}]}]
    matrix = coverage_matrix(reports)
    assert matrix["counts"] == {"backward": {"SIGKILL": 1}, "wall-clock": {"corrupt:flip": 1}}
    assert matrix["landed"] == 2 and matrix["not_landed"] == 1
    stats = restart_statistics(reports)
    assert stats["detection_s"]["median"] == 0.1 and stats["teardown_s"]["count"] == 0
    assert percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 95) == 10 and percentile([3.0], 50) == 3.0


# ---- the loop with a fake runner ---------------------------------------------------------------------------------
def options(tmp_path, scenario, **kwargs):
    return SoakOptions(scenario=scenario, out=tmp_path / "soak", seed=kwargs.pop("seed", 10), **kwargs)


def test_soak_of_passing_cycles_writes_coverage_stats_and_junit(tmp_path):
    runner = FakeRunner()
    outcome = run_soak(options(tmp_path, write_scenario(tmp_path), cycles=3), runner=runner, say=lambda t: None)
    assert outcome.exit_code == 0 and [c["seed"] for c in runner.calls] == [10, 11, 12]
    assert all(call["out_dir"].name == f"cycle-{i:03d}" for i, call in enumerate(runner.calls))
    soak = json.loads((outcome.out / "soak.json").read_text())
    expected: dict = {}
    for call in runner.calls:
        for f in call["plan"]:
            expected.setdefault(f.trigger.phase, {}).setdefault(f.action.signal, 0)
            expected[f.trigger.phase][f.action.signal] += 1
    assert soak["coverage"]["counts"] == expected
    assert soak["restart_statistics"]["steps_lost"]["median"] == 1
    assert soak["restart_statistics"]["restart_to_first_resumed_step_s"]["p95"] == 3.0
    cases = list(ET.parse(outcome.out / "junit.xml").getroot().iter("testcase"))
    assert [c.get("name") for c in cases] == ["cycle-000", "cycle-001", "cycle-002"]
    assert "<table" in (outcome.out / "soak.html").read_text()


def test_failure_is_shrunk_confirmed_saved_and_printed(tmp_path):
    scenario = write_scenario(tmp_path)
    runner = FakeRunner(fails=lambda plan: len(plan) > 0)
    said: list[str] = []
    outcome = run_soak(options(tmp_path, scenario, cycles=5, shrink_budget=3), runner=runner, say=said.append)
    assert outcome.exit_code == 1 and len(outcome.state["cycles"]) == 1  # stopped at the first failure
    minimal_path = outcome.out / "minimal-000.yaml"
    minimal = load_scenario(minimal_path)
    assert len(minimal.faults) == 1 and minimal.faults[0].action.signal == "SIGKILL"
    assert "random" not in yaml.safe_load(minimal_path.read_text())["faults"][0]  # explicit, scripted faults
    record = outcome.state["cycles"][0]
    assert record["minimal"]["confirmed"] is True and record["shrink"]["runs_used"] <= 3
    assert f"chaos run {minimal_path}" in "\n".join(said)
    assert runner.calls[-1]["out_dir"] == outcome.out / "shrink-000" / "confirm"

    kept = FakeRunner(fails=uses_signal("SIGSEGV"))
    going = run_soak(SoakOptions(scenario=scenario, out=tmp_path / "going", seed=10, cycles=6, stop_on_failure=False,
                                 shrink_budget=1), runner=kept, say=lambda t: None)
    verdicts = [c["verdict"] for c in going.state["cycles"]]
    assert len(verdicts) == 6 and "fail" in verdicts and going.exit_code == 1


def test_flaky_failure_is_said_to_be_flaky(tmp_path):
    first_only = iter([True])
    runner = FakeRunner(fails=lambda plan: next(first_only, False))
    said: list[str] = []
    outcome = run_soak(options(tmp_path, write_scenario(tmp_path), cycles=1, shrink_budget=2), runner=runner,
                       say=said.append)
    record = outcome.state["cycles"][0]
    assert record["minimal"]["flaky"] is True and (outcome.out / "minimal-000.yaml").is_file()
    assert any("FLAKY" in line for line in said)
    junit = ET.parse(outcome.out / "junit.xml").getroot()
    assert any(case.find("skipped") is not None for case in junit.iter("testcase"))


def test_an_interrupted_shrink_stops_the_soak_and_is_shrunk_again_next_time(tmp_path):
    """Ctrl-C or SIGTERM during a shrink candidate stops the soak there (seen on a GPU host: `timeout` sent
    SIGTERM and the soak went on through the remaining candidates, each read as passing). The cycle's shrink
    stays pending and the next soak with the same --out shrinks it first."""
    scenario = write_scenario(tmp_path)
    runner = FakeRunner(fails=lambda plan: len(plan) > 0, interrupt_at=1)  # call 0: the cycle; 1: first candidate
    with pytest.raises(KeyboardInterrupt, match="while shrinking cycle 0"):
        run_soak(options(tmp_path, scenario, cycles=2, shrink_budget=3), runner=runner, say=lambda t: None)
    assert len(runner.calls) == 2  # no candidate and no confirm run after the interrupted one
    state = read_state(tmp_path / "soak")
    assert [c["shrink"] for c in state["cycles"]] == ["pending"] and state["next_cycle"] == 1

    again = FakeRunner(fails=lambda plan: len(plan) > 0)
    outcome = run_soak(options(tmp_path, scenario, cycles=2, shrink_budget=3), runner=again, say=lambda t: None)
    assert again.calls[0]["out_dir"].parent.name == "shrink-000"  # the pending shrink first, before any cycle
    record = outcome.state["cycles"][0]
    assert record["shrink"] != "pending" and record["minimal"]["confirmed"] is True


def test_soak_survives_its_own_death(tmp_path):
    scenario = write_scenario(tmp_path)
    dying = FakeRunner(die_at=1)  # completes cycle 0, "killed" when cycle 1 starts
    with pytest.raises(RuntimeError):
        run_soak(options(tmp_path, scenario, cycles=2), runner=dying, say=lambda t: None)
    state = read_state(tmp_path / "soak")
    assert state["next_cycle"] == 1 and len(state["cycles"]) == 1
    again = FakeRunner()
    outcome = run_soak(options(tmp_path, scenario, cycles=2), runner=again, say=lambda t: None)
    assert [c["seed"] for c in again.calls] == [11]  # cycle 1 only
    assert [c["cycle"] for c in outcome.state["cycles"]] == [0, 1]
    with pytest.raises(InputError, match="another scenario, seed"):
        run_soak(options(tmp_path, scenario, cycles=3, seed=99), runner=FakeRunner(), say=lambda t: None)


# ---- real soaks ----------------------------------------------------------------------------------------------------
def test_real_soak_two_cycles_coverage_matrix(tmp_path, small_golden, capsys):
    """Two real cycles on the 2-rank workload (~30-60 s with the session's golden)."""
    started = time.monotonic()
    out = tmp_path / "soak"
    code = cli.main(["soak", str(write_scenario(tmp_path)), "--cycles", "2", "--seed", "3", "--out", str(out),
                     "--golden-cache", str(small_golden.parent), "--keep-going", "--shrink-budget", "1"])
    elapsed = time.monotonic() - started
    soak = json.loads((out / "soak.json").read_text())
    cycles = soak["cycles"]
    assert [c["seed"] for c in cycles] == [3, 4]
    expected: dict = {}
    for cycle in cycles:
        report = json.loads((out / cycle["run_dir"] / "report.json").read_text())
        for f in report["faults"]:
            assert f["landed"], f  # every drawn fault must be reachable
            expected.setdefault(f["landed"]["phase"], {}).setdefault(f["landed"]["signal"], 0)
            expected[f["landed"]["phase"]][f["landed"]["signal"]] += 1
    assert soak["coverage"]["counts"] == expected and soak["coverage"]["landed"] >= 2
    assert soak["restart_statistics"]["detection_s"]["count"] >= 1
    assert (out / "soak.html").is_file() and (out / "junit.xml").is_file()
    assert code == 0, capsys.readouterr().out
    print(f"real soak --cycles 2: {elapsed:.1f}s")


def test_real_soak_of_a_broken_trainer_gives_a_confirmed_minimal_reproducer(tmp_path, small_golden, capsys):
    """One cycle against a trainer that does not restore RNG state (dropout makes resume diverge): the soak
    fails, shrinks (at most 2 candidate runs) and confirms the minimal scenario (~1-2 min)."""
    started = time.monotonic()
    out = tmp_path / "soak"
    path = write_scenario(tmp_path, ", bugs: [no_rng_restore]")
    base, signals = load_scenario(path), ScheduleOptions(signals=("SIGKILL", "SIGSEGV"))
    # A seed whose schedule has two faults, the first after a checkpoint and before the last step: the resume
    # then recomputes steps with the wrong dropout masks (a kill at step 1 would resume from scratch and pass).
    seed = next(s for s in range(1000) if len(plan := plan_faults(cycle_scenario(base, 0, s, signals))) == 2
                and 3 <= plan[0].trigger.step <= 5)
    code = cli.main(["soak", str(path), "--cycles", "1", "--seed", str(seed), "--out", str(out),
                     "--golden-cache", str(small_golden.parent), "--signals", "SIGKILL,SIGSEGV", "--shrink-budget", "2"])
    elapsed = time.monotonic() - started
    printed = capsys.readouterr().out
    assert code == 1, printed
    minimal = out / "minimal-000.yaml"
    record = read_state(out)["cycles"][0]
    assert record["verdict"] == "fail" and record["minimal"]["confirmed"] is True, record
    assert f"chaos run {minimal}" in printed
    scenario = load_scenario(minimal)
    assert scenario.workload.config.bugs == ("no_rng_restore",) and 1 <= len(scenario.faults)
    print(f"real broken-trainer soak: {elapsed:.1f}s")
