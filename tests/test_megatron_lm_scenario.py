"""The shipped megatron_lm scenarios as data: they validate (against a stand-in checkout where Megatron-LM is
not installed), survive the round trip through a run directory's scenario.yaml, plan their observed faults,
and give soak cycles drawn from the black-box triggers; and the errors a user meets name file and field."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from chaos.errors import InputError
from chaos.scenario import load_scenario, load_scenario_mapping, load_scenario_text, scenario_to_mapping
from chaos.schedule import ScheduleOptions, plan_faults
from chaos.soak.cycles import cycle_scenario

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "scenarios" / "megatron_lm").glob("*.yaml"))
BASE = ROOT / "scenarios" / "megatron_lm" / "gpt3_mcore_tp1_torch_dist_1gpu.yaml"
"""The base the tests below vary: the upstream test's shape, 24 iterations, chaos restarting it."""


@pytest.fixture
def checkout(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "Megatron-LM"
    (path / "megatron").mkdir(parents=True)
    (path / "pretrain_gpt.py").write_text("# stand-in: only its path matters here\n")
    monkeypatch.setenv("MEGATRON_LM", str(path))
    return path


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_megatron_lm_shipped_scenarios_validate_and_round_trip(path, checkout):
    scenario = load_scenario(path)
    assert scenario.workload.kind == "megatron_lm" and scenario.workload.observation == "log"
    assert scenario.workload.config.script == str(checkout / "pretrain_gpt.py")
    again = load_scenario_mapping(scenario_to_mapping(scenario), "round-trip", Path("/"))
    # stored resolved (absolute paths, every setting explicit): valid from any folder, the same workload
    assert again.workload == scenario.workload and again.faults == scenario.faults
    assert dataclasses.replace(again, workload_mapping=scenario.workload_mapping, base_dir=scenario.base_dir) == scenario
    plan = plan_faults(scenario)
    if "nondeterministic" in path.stem:  # a SIGKILL mid-iteration, then a graceful SIGTERM
        assert [f.trigger.phase for f in plan] == ["iteration", "iteration"] and plan[0].trigger.delay_s == 0.3
    elif path.stem.startswith("ft_launcher"):  # the job's own restarts: a SIGKILL mid-iteration, one between files
        assert [f.trigger.phase for f in plan] == ["iteration", "checkpoint.shard"] and plan[0].trigger.delay_s == 0.5
        assert scenario.restart.by == "job" and scenario.launcher == "ft_launcher"
    elif path.stem.startswith("inprocess"):  # Megatron-LM's own in-process restart: rank 0 paused past its soft timeout
        assert [(f.trigger.phase, f.action.kind) for f in plan] == [("iteration", "pause")]
        assert plan[0].action.duration_s > scenario.restart.job_hang_timeout_s == 20.0  # the job's to recover
        layer = scenario.facts.in_process
        assert layer is not None and layer.restarts is None  # Megatron-LM bounds no re-entry: max_restarts does
        assert scenario.restart.by == "job" and scenario.launcher == "torchrun"
        assert scenario.workload.launch(Path("/tmp/chaos-test-run")).in_process  # torchrun gets --max-restarts=0
    elif path.stem.startswith("restart_modes"):  # timing chaos's restarts (warm or not): two SIGKILLs mid-iteration
        assert [f.trigger.phase for f in plan] == ["iteration", "iteration"] and scenario.restart.by == "chaos"
        warm = scenario.workload.launch(Path("/tmp/chaos-test-run")).warm
        assert warm is None or "megatron.core" not in warm.imports  # on a GPU it initialises CUDA at import
    elif path.stem.startswith("selftest"):  # the control of `chaos selftest`: one SIGKILL mid-iteration
        assert [f.trigger.phase for f in plan] == ["iteration"] and plan[0].trigger.delay_s == 0.5
        assert scenario.accepted_state_differences  # Megatron-LM's own two findings, so the control passes
    else:  # the four faults of the upstream test's one- and two-GPU forms
        assert [f.trigger.phase for f in plan] == ["iteration", "checkpoint.shard", "iteration", "checkpoint.load"]
        assert plan[0].trigger.delay_s == 0.5
    launch = scenario.workload.launch(Path("/tmp/chaos-test-run"))
    assert launch.argv[1:4] == ("-m", "chaos.blackbox.exec_rank", "--") and "--exit-signal-handler" in launch.argv
    assert launch.argv[launch.argv.index("--save") + 1] == "/tmp/chaos-test-run/checkpoints"


def test_megatron_lm_soak_cycles_draw_observed_triggers(checkout):
    base = load_scenario(BASE)
    phases = set()
    for cycle in range(12):
        drawn = cycle_scenario(base, cycle, seed=100 + cycle, options=ScheduleOptions(signals=("SIGKILL", "SIGTERM")))
        phases |= {f.trigger.phase for f in drawn.faults}
    assert phases <= {"iteration", "checkpoint.begin", "checkpoint.shard", "checkpoint.metadata", "checkpoint.tracker"}
    assert "iteration" in phases and len(phases) >= 3


@pytest.mark.parametrize("body,field,fragment", [
    ("{step: 3, phase: backward}", "faults[0].at.phase", "expected one of ['iteration'"),
    ("{phase: checkpoint.commit}", "faults[0].at.phase", "got 'checkpoint.commit' (did you mean"),
    ("{step: 3, delay_s: -1}", "faults[0].at.delay_s", "expected a number > 0"),
    ("{after_s: 3, delay_s: 1}", "faults[0].at.delay_s", "wall-clock trigger"),
    ("{step: 40}", "faults[0].at.step", "train_iters=24"),
])
def test_megatron_lm_trigger_errors_name_the_field(checkout, body, field, fragment):
    text = (BASE.read_text().split("faults:")[0] + f"faults:\n  - at: {body}\n    target: {{rank: 0}}\n"
            "    signal: SIGKILL\n")
    with pytest.raises(InputError) as caught:
        load_scenario_text(text, "mine.yaml")
    assert caught.value.field == field and fragment in caught.value.message, caught.value


def test_delay_s_belongs_to_observed_workloads():
    with pytest.raises(InputError) as caught:
        load_scenario_text("workload: {preset: tiny_cpu}\nfaults:\n  - at: {step: 3, phase: forward, delay_s: 1}\n"
                           "    target: {rank: 0}\n    signal: SIGKILL\n", "probe.yaml")
    assert caught.value.field == "faults[0].at.delay_s" and "probe holds the rank" in caught.value.message


def test_megatron_lm_without_a_checkout_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.delenv("MEGATRON_LM", raising=False)
    with pytest.raises(InputError) as caught:
        load_scenario(BASE)
    assert caught.value.field.startswith("workload.") and "MEGATRON_LM" in caught.value.message
