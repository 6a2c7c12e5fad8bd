"""Scenario loading: every shipped scenario validates; every mistake names file, field and fix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from chaos.errors import InputError
from chaos.faults.signals import Signal
from chaos.faults.corrupt import Corrupt
from chaos.plan import Trigger
from chaos.scenario import (
    CHECK_NAMES, RandomFaults, ScriptedFault, TargetSpec, apply_overrides, dump_scenario, load_scenario,
    load_scenario_mapping, load_scenario_text, parse_overrides, scenario_to_mapping,
)
from chaos.schedule import plan_faults

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "scenarios").glob("*.yaml")) + sorted((ROOT / "scenarios" / "gpu").glob("*.yaml"))

WORKLOAD = "workload: {preset: tiny_cpu, world_size: 4, tensor_parallel: 2, train_iters: 12, save_interval: 4}\n"


def load(body: str, source: str = "test.yaml", with_workload: bool = True):
    return load_scenario_text((WORKLOAD if with_workload else "") + body, source)


def error_of(body: str, with_workload: bool = True) -> InputError:
    with pytest.raises(InputError) as caught:
        load(body, with_workload=with_workload)
    return caught.value


# ---- shipped scenarios -----------------------------------------------------------------------------
def test_scenarios_are_shipped():
    names = {path.name for path in SHIPPED}
    assert {"gpt3_mcore_tp2_zero3_resume_fsdp_dtensor.yaml", "kill_during_tracker_update.yaml", "hang_sigstop.yaml",
            "node_kill.yaml", "corrupt_checkpoint.yaml", "random_seeded.yaml",
            "gpt3_mcore_te_tp2_zp_z3_resume_fsdp_dtensor.yaml", "pause_ranks.yaml", "straggler_node.yaml",
            "multihost_faults.yaml"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_scenario_validates_plans_and_round_trips(path):
    scenario = load_scenario(path)
    plan = plan_faults(scenario)
    assert plan, "every shipped scenario injects at least one fault"
    for fault in plan:
        assert fault.trigger.attempt <= scenario.restart.max_restarts + 1
        assert all(0 <= rank < scenario.world_size for rank in fault.target.ranks)
        if fault.trigger.step is not None:
            assert fault.trigger.step <= scenario.train_iters
    again = load_scenario_text(dump_scenario(scenario), "elsewhere/copy.yaml")
    assert again == scenario
    assert plan_faults(again) == plan


def test_flagship_attempts_follow_the_faults():
    scenario = load_scenario(ROOT / "scenarios" / "gpt3_mcore_tp2_zero3_resume_fsdp_dtensor.yaml")
    plan = plan_faults(scenario)
    assert [(f.trigger.step, f.trigger.phase, f.trigger.attempt, f.target.ranks, f.action.signal) for f in plan] == [
        (3, "backward", 1, (1,), "SIGKILL"),
        (8, "checkpoint.shard", 2, (2,), "SIGKILL"),
        (10, "forward", 3, (0, 1, 2, 3), "SIGTERM"),
        (10, "checkpoint.load", 4, (3,), "SIGKILL"),
    ]
    assert plan[1].trigger.index == 1
    assert scenario.restart.max_restarts == 5
    assert scenario.golden_mode == "exact"


def test_gpu_scenario_is_megatron_mode_on_cuda():
    scenario = load_scenario(ROOT / "scenarios" / "gpu" / "gpt3_mcore_te_tp2_zp_z3_resume_fsdp_dtensor.yaml")
    assert scenario.device == "cuda"
    assert scenario.workload.config.transformer_impl == "transformer_engine" and scenario.workload.config.bf16
    assert scenario.golden_mode == "megatron"


# ---- defaults and forms ------------------------------------------------------------------------------
def test_defaults():
    scenario = load("", source="some/dir/my_test.yaml")
    assert scenario.name == "my_test"
    assert scenario.seed == 0 and scenario.launcher == "direct" and scenario.faults == ()
    assert scenario.checks == CHECK_NAMES
    assert scenario.golden.path is None and scenario.golden_mode == "exact"
    assert scenario.workload_mapping["train_iters"] == 12
    assert scenario.restart.max_restarts == 5


def test_long_form_equals_shorthand():
    short = load("faults:\n  - at: {step: 3, phase: backward}\n    target: {rank: 1}\n    signal: SIGKILL\n")
    long = load("faults:\n  - trigger: {step: 3, phase: backward, attempt: 1}\n    target: 1\n"
                "    action: {signal: SIGKILL}\n")
    assert short.faults == long.faults == (
        ScriptedFault(Trigger(step=3, phase="backward"), TargetSpec("rank", (1,)), Signal("SIGKILL")),
    )


def test_target_forms():
    scenario = load("faults:\n"
                    "  - {at: {step: 2, phase: data}, target: {ranks: [3, 0]}, signal: SIGTERM}\n"
                    "  - {at: {step: 2, phase: data}, target: all, signal: SIGTERM}\n"
                    "  - {at: {step: 2, phase: data}, target: {all: true}, signal: SIGTERM}\n"
                    "  - {at: {step: 2, phase: data}, target: random, signal: SIGTERM}\n"
                    "  - {at: {step: 2, phase: data}, target: {random: 2}, signal: SIGTERM}\n"
                    "  - {at: {after_s: 1.5}, target: {rank: 0}, corrupt: truncate}\n")
    targets = [fault.target for fault in scenario.faults]
    assert targets[0] == TargetSpec("ranks", (0, 3))
    assert targets[1] == targets[2] == TargetSpec("all")
    assert targets[3] == TargetSpec("random") and targets[4] == TargetSpec("random", count=2)
    assert scenario.faults[5].trigger == Trigger(after_s=1.5)
    assert scenario.faults[5].action == Corrupt("truncate")


def test_random_entries():
    scenario = load("restart: {max_restarts: 6}\nfaults:\n"
                    "  - random: {count: 3, steps: [2, 10], phases: [forward, backward, checkpoint.shard],"
                    " ranks: [0, 1, 2, 3], signals: [SIGKILL, SIGTERM]}\n"
                    "  - random: {mtbf_s: 30, signals: [SIGKILL], until_s: 120, attempt: 4}\n")
    step_entry, mtbf_entry = scenario.faults
    assert isinstance(step_entry, RandomFaults) and not step_entry.is_mtbf
    assert step_entry.steps == (2, 10) and step_entry.count == 3
    assert mtbf_entry.is_mtbf and mtbf_entry.count == 3  # default: the restarts left after attempt 4


def test_scientific_notation_is_a_number():
    scenario = load("restart: {teardown_grace_s: 5e-1}\n")
    assert scenario.restart.teardown_grace_s == 0.5


def test_golden_mode_defaults_to_megatron_on_cuda():
    scenario = load("workload: {preset: upstream_gpu}\n", with_workload=False)
    assert scenario.golden_mode == "megatron"
    assert load("golden: {mode: exact}\n").golden_mode == "exact"


def test_golden_path_resolves_against_the_scenario_directory_then_cwd(tmp_path, monkeypatch):
    (tmp_path / "scenarios").mkdir()
    (tmp_path / "goldens").mkdir()
    golden = tmp_path / "goldens" / "g.json"
    golden.write_text("{}")
    scenario_file = tmp_path / "scenarios" / "s.yaml"
    scenario_file.write_text(WORKLOAD + "golden: {path: ../goldens/g.json}\n")
    assert load_scenario(scenario_file).golden.path == golden.resolve()

    scenario_file.write_text(WORKLOAD + "golden: goldens/g.json\n")
    monkeypatch.chdir(tmp_path)
    assert load_scenario(scenario_file).golden.path == golden.resolve()

    monkeypatch.chdir(tmp_path / "scenarios")
    with pytest.raises(InputError) as caught:
        load_scenario(scenario_file)
    assert caught.value.field == "golden.path" and "no golden file" in caught.value.message


def test_checks_pick_and_order():
    assert load("checks: [restart_budget, trajectory]\n").checks == ("trajectory", "restart_budget")
    assert load("checks: all\n").checks == CHECK_NAMES


# ---- errors: file, field path, expectation, suggestion ------------------------------------------------------
def test_misspelt_signal_suggests_the_fix():
    error = error_of("faults:\n  - {at: {step: 3, phase: backward}, target: {rank: 1}, signal: SIGKIL}\n")
    assert error.source == "test.yaml"
    assert error.field == "faults[0].signal"
    assert "did you mean SIGKILL?" in error.message


def test_rank_out_of_range_names_world_size():
    error = error_of("faults:\n  - {at: {step: 3, phase: backward}, target: {rank: 1}, signal: SIGKILL}\n"
                     "  - {at: {step: 3, phase: backward}, target: {rank: 7}, signal: SIGKILL}\n")
    assert error.field == "faults[1].target.rank"
    assert "world_size=4" in error.message and "7" in error.message
    assert str(error).startswith("test.yaml: faults[1].target.rank:")


@pytest.mark.parametrize("body, field, fragment", [
    ("seeed: 3\n", "seeed", "did you mean seed?"),
    ("launcher: torchrn\n", "launcher", "did you mean torchrun?"),
    ("faults:\n  - {at: {step: 3, phase: backwards}, target: all, signal: SIGKILL}\n", "faults[0].at.phase",
     "did you mean backward?"),
    ("faults:\n  - {at: {step: 13, phase: forward}, target: all, signal: SIGKILL}\n", "faults[0].at.step",
     "train_iters=12"),
    ("faults:\n  - {at: {step: 3, phase: forward}, target: {node: 1}, signal: SIGKILL}\n", "faults[0].target.node",
     "nodes=1"),
    ("faults:\n  - {at: {step: 3, phase: forward}, target: {rnak: 1}, signal: SIGKILL}\n", "faults[0].target.rnak",
     "did you mean rank?"),
    ("faults:\n  - {at: {step: 3, phase: optimizer, index: 1}, target: all, signal: SIGKILL}\n",
     "faults[0].at.index", "no index"),
    ("faults:\n  - {at: {step: 4, phase: checkpoint.shard, index: 3}, target: all, signal: SIGKILL}\n",
     "faults[0].at.index", "shard_files_per_rank=2"),
    ("faults:\n  - {at: {step: 3, phase: forward, attempt: 7}, target: all, signal: SIGKILL}\n",
     "faults[0].at.attempt", "max_restarts=5"),
    ("faults:\n  - {at: {step: 3}, target: all, signal: SIGKILL}\n", "faults[0].at.phase", "missing"),
    ("faults:\n  - {at: {after_s: 3, step: 2}, target: all, signal: SIGKILL}\n", "faults[0].at.step", "wall-clock"),
    ("faults:\n  - {at: {step: 3, phase: forward}, target: all}\n", "faults[0].signal", "exactly one action"),
    ("faults:\n  - {at: {step: 3, phase: forward}, target: all, signal: SIGKILL, corrupt: flip}\n",
     "faults[0].signal", "exactly one action"),
    ("faults:\n  - {at: {step: 3, phase: forward}, target: all, corrupt: flipp}\n", "faults[0].corrupt",
     "did you mean flip?"),
    ("faults:\n  - {at: {step: 3, phase: forward}, signal: SIGKILL}\n", "faults[0].target", "missing"),
    ("faults:\n  - {random: {count: 9}}\n", "faults[0].random.count", "max_restarts=5"),
    ("restart: {max_restarts: 9}\nfaults:\n  - {random: {count: 9, steps: [1, 8], phases: [checkpoint.shard]}}\n",
     "faults[0].random.count", "distinct steps"),
    ("faults:\n  - {random: {mtbf_s: 10, steps: [1, 3]}}\n", "faults[0].random.steps", "MTBF"),
    ("faults:\n  - {random: {count: 1}, target: all}\n", "faults[0].target", "no other keys"),
    ("faults:\n  - {random: {signals: [SIGTREM]}}\n", "faults[0].random.signals[0]", "did you mean SIGTERM?"),
    ("restart: {hang_timeout_s: 0}\n", "restart.hang_timeout_s", "> 0"),
    ("restart: {max_restart: 1}\n", "restart.max_restart", "did you mean max_restarts?"),
    ("golden: {mode: bitwise}\n", "golden.mode", "exact"),
    ("tolerance: {lm_loss: 0.1}\n", "tolerance.lm_loss", "did you mean lm loss?"),
    ("checks: [trajectory, data_ordr]\n", "checks[1]", "did you mean data_order?"),
    ("seed: three\n", "seed", "integer"),
])
def test_errors_name_the_field(body, field, fragment):
    error = error_of(body)
    assert error.field == field
    assert fragment in error.message


def test_workload_errors_come_from_the_workload_config():
    error = error_of("workload: {preset: tiny_cpu, train_iter: 8}\n", with_workload=False)
    assert error.field == "workload.train_iter" and "did you mean train_iters?" in error.message
    error = error_of("workload: {kind: gpt4}\n", with_workload=False)
    assert error.field == "workload.kind" and "did you mean gpt3?" in error.message
    error = error_of("workload: {name: gpt3}\n", with_workload=False)
    assert error.field == "workload.name" and "unknown field" in error.message


def test_yaml_syntax_error_has_a_line_number():
    error = error_of("faults:\n  - at: {step: 3, phase: backward\n    target: all\n")
    assert error.field.startswith("line ")
    assert "invalid YAML" in error.message


def test_duplicate_keys_are_errors():
    error = error_of("seed: 1\nseed: 2\n")
    assert error.field == "line 3, column 1" and "duplicate key 'seed'" in error.message


def test_empty_and_non_mapping_documents():
    assert "empty scenario" in error_of("", with_workload=False).message
    assert "expected a mapping" in error_of("- 1\n", with_workload=False).message


def test_missing_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError) as caught:
        load_scenario(tmp_path / "nope.yaml")
    assert caught.value.source.endswith("nope.yaml")


# ---- overrides and round trips ------------------------------------------------------------------------------
FLAGSHIP = ROOT / "scenarios" / "gpt3_mcore_tp2_zero3_resume_fsdp_dtensor.yaml"


def test_overrides_are_applied_and_revalidated():
    scenario = load_scenario(FLAGSHIP)
    changed = apply_overrides(scenario, parse_overrides(["workload.train_iters=16", "seed=3", "faults.0.at.step=2",
                                                         "restart.hang_timeout_s=30", "checks=[trajectory]"]))
    assert changed.train_iters == 16 and changed.workload_mapping["train_iters"] == 16
    assert changed.seed == 3
    assert changed.faults[0].trigger.step == 2
    assert changed.restart.hang_timeout_s == 30.0
    assert changed.checks == ("trajectory",)
    assert scenario.train_iters == 12  # the original is untouched (frozen)
    assert apply_overrides(scenario, {"seed": 4}).seed == 4  # typed values pass through


def test_override_that_breaks_the_scenario_is_an_input_error():
    scenario = load_scenario(FLAGSHIP)
    with pytest.raises(InputError) as caught:
        apply_overrides(scenario, {"workload.train_iters": "6"})
    assert caught.value.field == "faults[1].at.step"
    assert "with overrides workload.train_iters" in caught.value.source
    with pytest.raises(InputError) as caught:
        apply_overrides(scenario, {"faults.9.at.step": "2"})
    assert caught.value.field == "faults.9"
    with pytest.raises(InputError):
        parse_overrides(["no_equals_sign"])


def test_device_override_flips_the_default_golden_mode():
    scenario = load("")
    assert apply_overrides(scenario, {"workload": "{preset: upstream_gpu}"}).golden_mode == "megatron"


def test_round_trip_of_every_form():
    scenario = load("name: everything\ndescription: all forms\nseed: 11\nlauncher: torchrun\n"
                    "restart: {max_restarts: 6, teardown_grace_s: 1, hang_timeout_s: 20, startup_timeout_s: 60}\n"
                    "faults:\n"
                    "  - {at: {step: 4, phase: checkpoint.shard, index: 2, attempt: 2}, target: {ranks: [1, 2]},"
                    " signal: SIGABRT}\n"
                    "  - {at: {phase: checkpoint.load}, target: {random: 2}, signal: SIGKILL}\n"
                    "  - {at: {after_s: 2.5, attempt: 3}, target: {rank: 0}, corrupt: truncate}\n"
                    "  - {at: {step: 3, phase: forward}, target: {rank: 1}, pause: 4.5}\n"
                    "  - {at: {step: 5, phase: backward}, target: {rank: 2}, straggler: {cpus: 0.25, duration_s: 8}}\n"
                    "  - random: {count: 2, steps: [2, 30], phases: [data], ranks: [3], signals: SIGINT, attempt: 2}\n"
                    "  - random: {mtbf_s: 12.5, until_s: 100, count: 2}\n"
                    "tolerance: {lm loss: 0.01, grad norm: 0.1}\nchecks: [trajectory, no_survivors]\n")
    mapping = scenario_to_mapping(scenario)
    assert load_scenario_mapping(yaml.safe_load(yaml.safe_dump(mapping)), "copy.yaml") == scenario


@pytest.mark.parametrize("action, field, expected", [
    ("pause: 0", "faults[0].pause", "expected a number > 0, got 0"),
    ("pause: 4000", "faults[0].pause", "expected seconds <= 3600"),
    ("straggler: {cpus: 0.001, duration_s: 5}", "faults[0].straggler.cpus", "expected at least 0.01"),
    ("straggler: {cpus: 0.5}", "faults[0].straggler.duration_s", "missing; expected e.g. straggler:"),
    ("straggler: 2", "faults[0].straggler", "expected a mapping"),
    ("pause: 2\n    signal: SIGKILL", "faults[0].signal", "expected exactly one action"),
])
def test_stall_actions_are_validated_naming_the_field(action, field, expected):
    error = error_of("faults:\n  - at: {step: 3, phase: forward}\n    target: {rank: 1}\n    " + action + "\n")
    assert f"{field}: {expected}" in str(error)


def test_scenario_modules_do_not_import_torch():
    code = ("import sys, chaos.scenario, chaos.schedule, chaos.golden\n"
            f"chaos.scenario.load_scenario({str(FLAGSHIP)!r})\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_golden_repeats_and_accepted_state_differences_are_validated_and_round_trip():
    scenario = load('golden: {repeats: 3}\naccept_state_differences: {"*torch_rng_state": "a known finding"}\n')
    assert scenario.golden_repeats == 3 and scenario.accepted_state_differences == {"*torch_rng_state": "a known finding"}
    assert load("").golden_repeats == 1  # chaos's CPU trainer: numerics pinned, one run is a bitwise reference
    gpu = load("workload: {preset: upstream_gpu}\n", with_workload=False)
    assert gpu.golden_repeats == 2  # CUDA: measured, not assumed
    from chaos.scenario import dump_scenario, load_scenario_text

    assert load_scenario_text(dump_scenario(scenario), "again.yaml") == scenario
    for text, field in (("golden: {repeats: 0}\n", "golden.repeats"),
                        ('accept_state_differences: {"*": "everything"}\n', "accept_state_differences"),
                        ('accept_state_differences: {"*rng*": ""}\n', "accept_state_differences.*rng*"),
                        ("accept_state_differences: [x]\n", "accept_state_differences")):
        with pytest.raises(InputError) as caught:
            load(text)
        assert caught.value.field == field, (text, caught.value)
