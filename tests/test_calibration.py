"""The rule a run is judged by follows what the golden measured: repeats identical -> exact; repeats that
differ -> a tolerance derived from the measured spread, per metric; an explicit setting wins. The checkpoint
state follows the measured reproducibility alone. Synthetic numbers: the logic is the point here (the real
runs are in test_strong_verdict.py)."""

from __future__ import annotations

import math

import pytest

from chaos import golden as golden_module
from chaos.calibration import SPREAD_FACTOR, decide_rule, measure
from chaos.comparison import compare
from chaos.golden import Golden, GoldenCheckpoint, read_golden, write_golden
from chaos.state import layout
from chaos.state.compare import compare_state
from chaos.state.fingerprint import estimated_distance
from chaos.state.fingerprint import Entry

LOSS = {s: 10.0 - 0.1 * s for s in range(1, 11)}


def test_identical_repeats_give_exact_and_say_so():
    calibration = measure({"lm loss": LOSS, "learning rate": {s: 1e-4 for s in LOSS}}, [{"lm loss": dict(LOSS),
                          "learning rate": {s: 1e-4 for s in LOSS}}])
    rule = decide_rule(None, calibration, "cuda")
    assert rule.mode == "exact" and rule.why == "2 runs identical at 10 of 10 steps: exact"


def test_one_pinned_run_is_exact_because_it_is_pinned():
    rule = decide_rule(None, measure({"lm loss": LOSS}, [], pinned="CPU numerics pinned: MKL_CBWR=COMPATIBLE"), "cpu")
    assert rule.mode == "exact" and "pinned" in rule.why


def test_differing_repeats_give_a_tolerance_of_the_measured_spread_times_the_factor_per_metric():
    noisy = {s: v * (1 + (2e-6 if s % 2 else -1e-6)) for s, v in LOSS.items()}
    calibration = measure({"lm loss": LOSS, "consumed samples": {s: 8.0 * s for s in LOSS}},
                          [{"lm loss": noisy, "consumed samples": {s: 8.0 * s for s in LOSS}}])
    spread = calibration.metrics["lm loss"]
    assert spread.differing_steps == 10 and math.isclose(spread.max_relative, 2e-6, rel_tol=1e-6)
    rule = decide_rule(None, calibration, "cuda")
    assert rule.mode == "calibrated"
    assert math.isclose(rule.tolerances["lm loss"], SPREAD_FACTOR * spread.max_relative)
    assert rule.tolerances["consumed samples"] == 0.0  # identical in every run: still exact
    assert "10 of 10 steps varied" in rule.why and "exact for consumed samples" in rule.why
    golden = Golden(metrics={"lm loss": LOSS, "consumed samples": {s: 8.0 * s for s in LOSS}})
    within = {"lm loss": {s: v * (1 + 3 * 2e-6) for s, v in LOSS.items()}, "consumed samples": {s: 8.0 * s for s in LOSS}}
    beyond = {"lm loss": {s: v * (1 + 10 * 2e-6) for s, v in LOSS.items()}, "consumed samples": {s: 8.0 * s for s in LOSS}}
    off_by_one = {**within, "consumed samples": {**within["consumed samples"], 5: 41.0}}
    assert compare(golden, within, "calibrated", rule.tolerances).passed
    assert not compare(golden, beyond, "calibrated", rule.tolerances).passed
    assert not compare(golden, off_by_one, "calibrated", rule.tolerances).passed


def test_a_metric_that_varies_where_the_golden_is_zero_is_left_out_and_said_so():
    calibration = measure({"num-zeros": {1: 0.0, 2: 3.0}, "lm loss": {1: 1.0, 2: 1.0}},
                          [{"num-zeros": {1: 2.0, 2: 3.0}, "lm loss": {1: 1.0, 2: 1.0 + 1e-7}}])
    rule = decide_rule(None, calibration, "cuda")
    assert "num-zeros" in rule.not_compared and "num-zeros" not in rule.tolerances
    golden = Golden(metrics={"num-zeros": {1: 0.0, 2: 3.0}, "lm loss": {1: 1.0, 2: 1.0}})
    result = compare(golden, {"num-zeros": {1: 7.0, 2: 3.0}, "lm loss": {1: 1.0, 2: 1.0}}, "calibrated",
                     rule.tolerances, skip=tuple(rule.not_compared))
    assert result.passed and [m.metric for m in result.metrics] == ["lm loss"]


def test_an_explicit_mode_or_tolerance_wins_and_no_calibration_keeps_the_old_defaults():
    calibration = measure({"lm loss": LOSS}, [{"lm loss": dict(LOSS)}])
    assert decide_rule("megatron", calibration, "cuda").mode == "megatron"
    assert "set in the scenario" in decide_rule("megatron", calibration, "cuda").why
    assert decide_rule(None, None, "cpu").mode == "exact"
    assert decide_rule(None, None, "cuda").mode == "megatron"
    overridden = decide_rule(None, calibration, "cuda", {"lm loss": 0.01})
    assert overridden.mode == "calibrated" and overridden.tolerances["lm loss"] == 0.01


def test_the_golden_sidecar_keeps_calibration_fingerprints_and_files(tmp_path):
    calibration = measure({"lm loss": LOSS}, [{"lm loss": {s: v + 1e-9 for s, v in LOSS.items()}}])
    entry = Entry("tensor", "model", "ab" * 16, "float32", [4, 4], 16, norm=2.0, nonfinite=0,
                  samples=[0.5] * 16)
    golden = Golden(metrics={"lm loss": LOSS}, meta=golden_module.new_meta({}, "f" * 64), calibration=calibration,
                    checkpoints={8: GoldenCheckpoint({"model/w": entry.to_dict()}, {"model/w": 1e-7, "x": "differs"})},
                    checkpoint_files={"__*_*.distcp": 4, ".metadata": 1})
    path = write_golden(golden, tmp_path / "g.json")
    read = read_golden(path)
    assert read.calibration == calibration and read.checkpoint_files == golden.checkpoint_files
    assert read.checkpoints[8].spread == {"model/w": 1e-7, "x": "differs"}
    assert Entry.from_dict(read.checkpoints[8].entries["model/w"]) == entry
    assert read.metrics == golden.metrics


def test_a_damaged_sidecar_field_is_bad_input_naming_it(tmp_path):
    from chaos.errors import InputError

    path = write_golden(Golden(metrics={"lm loss": LOSS}, meta=golden_module.new_meta({}, None,
                                                                                     checkpoints={"8": [1, 2]})),
                        tmp_path / "g.json")
    with pytest.raises(InputError) as caught:
        read_golden(path)
    assert caught.value.field == "extra.checkpoints.8"


# ---- the checkpoint state -------------------------------------------------------------------------------
def tensor(sha: str, norm: float, samples=None, category: str = "model", dtype: str = "float32") -> Entry:
    return Entry("tensor", category, sha, dtype, [100], 100, norm=norm, nonfinite=0, samples=samples)


def value(v, category: str = "progress") -> Entry:
    return Entry("value", category, f"sha-{v}", value=v)


def test_state_equal_bitwise_passes_and_any_difference_of_a_reproducible_golden_fails():
    golden = {"model/w": tensor("a", 1.0), "train.iteration": value(8), "rng/rank_0.torch_cpu":
              tensor("r", 5.0, category="rng", dtype="uint8")}
    assert compare_state(8, golden, {}, dict(golden)).passed
    moved = {**golden, "rng/rank_0.torch_cpu": tensor("r2", 5.0, category="rng", dtype="uint8"),
             "model/w": tensor("a2", 1.0 + 1e-9)}
    result = compare_state(8, golden, {}, moved)
    assert [d.category for d in result.differences] == ["rng", "model"]  # the likelier cause first
    assert result.differences[0].sentence() == "RNG state rng/rank_0.torch_cpu differs"


def test_a_tensor_that_varied_between_uninterrupted_runs_passes_within_the_factor_and_fails_beyond():
    samples = [1.0] * 100
    golden = {"model/w": tensor("a", 10.0, samples)}
    spread = {"model/w": 1e-3}
    near = tensor("b", 10.0, [1.0 + 2e-3] * 100)  # relative L2 ~ 2e-3 <= 4 x 1e-3
    far = tensor("c", 10.0, [1.0 + 1e-2] * 100)
    assert compare_state(8, golden, spread, {"model/w": near}).within_spread == 1
    result = compare_state(8, golden, spread, {"model/w": far})
    assert result.differences[0].kind == "beyond_spread" and result.differences[0].allowed == SPREAD_FACTOR * 1e-3
    assert math.isclose(estimated_distance(golden["model/w"], far), 1e-2, rel_tol=1e-6)


def test_a_norm_change_is_seen_even_where_the_samples_miss_it():
    golden = tensor("a", 10.0, [1.0] * 100)
    changed = tensor("b", 11.0, [1.0] * 100)  # the samples agree, the norm moved 10 %
    assert estimated_distance(golden, changed) == pytest.approx(0.1)


def test_values_that_varied_between_runs_are_not_judged_and_missing_or_new_entries_are():
    golden = {"other.timestamp": value(1, "other"), "train.iteration": value(8)}
    spread = {"other.timestamp": "differs"}
    actual = {"other.timestamp": value(2, "other"), "train.consumed_samples": value(64)}
    result = compare_state(8, golden, spread, actual)
    assert result.varying == ["other.timestamp"]
    assert {(d.key, d.kind) for d in result.differences} == {("train.iteration", "missing"),
                                                             ("train.consumed_samples", "extra")}


def test_a_non_finite_element_where_the_golden_had_none_always_fails():
    golden = {"model/w": tensor("a", 10.0, [1.0] * 100)}
    broken = Entry("tensor", "model", "b", "float32", [100], 100, norm=10.0, nonfinite=3, samples=[1.0] * 100)
    result = compare_state(8, golden, {"model/w": 1.0}, {"model/w": broken})
    assert result.differences[0].kind == "non_finite"


def test_accepted_differences_are_reported_with_their_reason_and_do_not_fail():
    golden = {"rng_state.0.torch_rng_state": tensor("a", 1.0, category="rng", dtype="uint8")}
    actual = {"rng_state.0.torch_rng_state": tensor("b", 1.0, category="rng", dtype="uint8")}
    result = compare_state(8, golden, {}, actual, {"*.torch_rng_state": "a known upstream finding"})
    assert result.passed and result.accepted[0][1] == "a known upstream finding"
    assert not compare_state(8, golden, {}, actual, {"*.cuda_rng_state": "another"}).passed


def test_configuration_and_other_categories_never_fail_the_state():
    golden = {"args.save": value("/a", "configuration"), "checkpoint_version": value(3.0, "other")}
    actual = {"args.save": value("/b", "configuration"), "checkpoint_version": value(4.0, "other")}
    result = compare_state(8, golden, {}, actual)
    assert result.passed and [d.key for d in result.notes] == ["checkpoint_version"]


# ---- what complete means ----------------------------------------------------------------------------------
def make_checkpoint(directory, names):
    for name in names:
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    return directory


def test_the_file_set_is_learned_as_patterns_with_counts(tmp_path):
    a = make_checkpoint(tmp_path / "a", [".metadata", "__0_0.distcp", "__1_0.distcp", "metadata.json"])
    b = make_checkpoint(tmp_path / "b", [".metadata", "__0_0.distcp", "__1_0.distcp", "metadata.json", "extra.log"])
    learned = layout.learn([layout.files_of(a), layout.files_of(b)])
    assert learned == {".metadata": 1, "__*_*.distcp": 2, "metadata.json": 1}  # extra.log: not in every one


def test_a_format_that_writes_an_extra_file_is_complete_and_one_that_stops_writing_a_file_is_not(tmp_path):
    """A job whose format adds a file (it is learned with the rest) passes; a checkpoint missing a file every
    uninterrupted checkpoint had fails, naming it. The hard-coded fallback list is what went stale."""
    from chaos.workloads.megatron_lm.layout import MegatronLayout

    with_extra = make_checkpoint(tmp_path / "golden", [".metadata", "__0_0.distcp", "common.pt", "new_format.idx"])
    learned = layout.learn([layout.files_of(with_extra)])
    run = make_checkpoint(tmp_path / "run", [".metadata", "__0_0.distcp", "common.pt", "new_format.idx"])
    assert MegatronLayout("torch_dist").problems(run, None, learned) == []
    (run / "new_format.idx").unlink()
    assert MegatronLayout("torch_dist").problems(run, None, learned) == \
        ["new_format.idx is missing (every checkpoint of the uninterrupted run had it)"]
    # today's Megatron-LM torch_dist writes no common.pt: the fallback list knows it, the learned set agrees
    current = make_checkpoint(tmp_path / "current", [".metadata", "__0_0.distcp", "metadata.json"])
    assert MegatronLayout("torch_dist").problems(current) == []
    assert MegatronLayout("torch_dist").problems(current, None, layout.learn([layout.files_of(current)])) == []
    assert MegatronLayout("torch_dist").problems(run, None, None) == ["metadata.json is missing (torch_dist writes it)"]


# ---- on a real trainer ---------------------------------------------------------------------------------------
def test_a_reproducible_trainer_recorded_twice_gets_the_exact_rule_and_bitwise_state(tmp_path):
    """chaos's CPU trainer, recorded from two uninterrupted runs (real ranks): identical at every step and in
    every checkpoint entry, so the rule is exact; the golden keeps every checkpoint's fingerprints and the
    file set, and the second run's directory stays beside the first as evidence."""
    from chaos.runner import record_golden, rule_for, state_rule_note
    from chaos.scenario import load_scenario_text
    from workload_runs import small_workload

    scenario = load_scenario_text(f"workload: {small_workload()}\n", "t.yaml")
    golden = record_golden(scenario, tmp_path / "g.json", tmp_path / "golden_run", repeats=2)
    assert golden.calibration.repeats == 2 and golden.calibration.identical
    assert rule_for(scenario, golden).why == "2 runs identical at 6 of 6 steps: exact"
    assert sorted(golden.checkpoints) == [2, 4, 6] and not any(c.spread for c in golden.checkpoints.values())
    assert state_rule_note(golden) == "bitwise: every entry equal in 2 uninterrupted run(s)"
    assert golden.checkpoint_files[".metadata"] == 1 and golden.checkpoint_files["chaos_manifest.json"] == 1
    assert (tmp_path / "golden_run.repeat-2" / "checkpoints" / "iter_0000006").is_dir()
    assert read_golden(tmp_path / "g.json").checkpoints.keys() == golden.checkpoints.keys()
