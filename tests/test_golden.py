"""Goldens: Megatron's format both ways, full precision, environment matching, Megatron's comparison rules."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from chaos.errors import InputError
from chaos.comparison import compare
from chaos.golden import (
    Golden, GoldenMeta, environment_fingerprint, environment_mismatches, find_golden, meta_path, new_meta,
    read_golden, workload_fingerprint, write_golden,
)
from chaos.workloads.gpt3.config import GPT3Config

# Megatron-LM's own golden files for gpt3_mcore_te_tp2_zp_z3_resume_fsdp_dtensor (upstream test data, kept
# with the tests so a clean clone reads them)
REFERENCE = Path(__file__).resolve().parent / "fixtures" / "megatron_lm"
H100 = REFERENCE / "golden_values_dev_dgx_h100.json"
A100 = REFERENCE / "golden_values_dev_dgx_a100.json"


def copy_metrics(golden: Golden) -> dict[str, dict[int, float]]:
    return {metric: dict(values) for metric, values in golden.metrics.items()}


# ---- reading Megatron's files -------------------------------------------------------------------------------
def test_reads_megatron_goldens():
    h100 = read_golden(H100)
    assert set(h100.metrics) == {"lm loss", "num-zeros", "mem-allocated-bytes", "mem-max-allocated-bytes",
                                 "iteration-time"}
    assert h100.metrics["lm loss"][1] == 10.93124 and len(h100.metrics["lm loss"]) == 100
    assert min(h100.metrics["iteration-time"]) == 2
    assert h100.meta is None
    a100 = read_golden(A100)
    assert len(a100.metrics["lm loss"]) == 21 and a100.metrics["lm loss"][5] == 10.91013


def test_megatron_file_written_back_keeps_its_shape(tmp_path):
    write_golden(read_golden(H100), tmp_path / "h100.json")
    ours, theirs = json.loads((tmp_path / "h100.json").read_text()), json.loads(H100.read_text())
    assert ours == theirs
    write_golden(read_golden(A100), tmp_path / "a100.json")
    assert json.loads((tmp_path / "a100.json").read_text())["lm loss"]["step_interval"] == 1  # 1, 5, 10 ... -> gcd 1


# ---- writing ours -------------------------------------------------------------------------------------------
def test_write_read_round_trips_floats_exactly_and_keeps_meta_aside(tmp_path):
    values = {1: 0.1 + 0.2, 2: 1 / 3, 3: 10.931240000000001, 4: 2.0 ** -60, 5: float("nan")}
    meta = new_meta(environment_fingerprint("cpu"), "abc123", final_state_hash="f" * 64, scenario="flagship",
                    train_iters=5)
    golden = Golden(metrics={"lm loss": values, "consumed samples": {1: 8, 2: 16, 3: 24, 4: 32, 5: 40}}, meta=meta)
    path = write_golden(golden, tmp_path / "goldens" / "tiny.json")

    metrics_file = json.loads(path.read_text())
    assert set(metrics_file) == {"lm loss", "consumed samples"}, "the metrics file stays pure Megatron format"
    assert set(metrics_file["lm loss"]) == {"start_step", "end_step", "step_interval", "values"}
    assert meta_path(path) == tmp_path / "goldens" / "tiny.meta.json" and meta_path(path).exists()

    again = read_golden(path)
    for step in range(1, 5):
        assert again.metrics["lm loss"][step] == values[step]
    assert again.metrics["lm loss"][5] != again.metrics["lm loss"][5]  # nan survives
    assert again.meta == meta and again.meta.extra == {"train_iters": 5}
    assert compare(again, golden.metrics, "exact").passed


def test_data_hashes_round_trip_through_the_meta_sidecar(tmp_path):
    records = [{"step": 1, "lm_loss": 10.5, "data_hash": "aa"}, {"step": 2, "lm_loss": 10.25, "data_hash": "bb"}]
    golden = Golden.from_records(records, meta=new_meta({}, "fp", train_iters=2))
    assert golden.data_hashes == {1: "aa", 2: "bb"}
    path = write_golden(golden, tmp_path / "g.json")
    assert set(json.loads(path.read_text())) == {"lm loss"}, "the metrics file stays pure Megatron format"
    assert json.loads(meta_path(path).read_text())["extra"]["data_hashes"] == {"1": "aa", "2": "bb"}
    again = read_golden(path)
    assert again.data_hashes == {1: "aa", 2: "bb"} and again.meta.extra == {"train_iters": 2}


def test_step_interval_is_written_from_the_spacing(tmp_path):
    path = write_golden(Golden({"lm loss": {5: 1.0, 10: 2.0, 15: 3.0}}), tmp_path / "g.json")
    assert json.loads(path.read_text())["lm loss"] == {"start_step": 5, "end_step": 15, "step_interval": 5,
                                                        "values": {"5": 1.0, "10": 2.0, "15": 3.0}}


def test_from_records():
    records = [{"step": 1, "lm_loss": 10.5, "grad_norm": 3.25, "lr": 1e-4, "consumed_samples": 8},
               {"step": 2, "lm_loss": 10.25, "grad_norm": 3.0, "lr": 2e-4, "consumed_samples": 16}]
    golden = Golden.from_records(records)
    assert golden.metrics == {"lm loss": {1: 10.5, 2: 10.25}, "grad norm": {1: 3.25, 2: 3.0},
                              "learning rate": {1: 1e-4, 2: 2e-4}, "consumed samples": {1: 8.0, 2: 16.0}}


@pytest.mark.parametrize("text, field", [
    ('{"lm loss": {"values": {"1": 1.0,}}}', "line 1, column 34"),
    ('[]', ""),
    ('{"lm loss": {"start_step": 1}}', "lm loss"),
    ('{"lm loss": {"values": {"one": 1.0}}}', "lm loss.values.one"),
    ('{"lm loss": {"values": {"3": "ten"}}}', "lm loss.values.3"),
])
def test_bad_golden_files_name_file_and_metric(tmp_path, text, field):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(InputError) as caught:
        read_golden(path)
    assert caught.value.source == str(path) and caught.value.field == field


def test_bad_meta_sidecar_is_an_input_error(tmp_path):
    path = write_golden(Golden({"lm loss": {1: 1.0}}), tmp_path / "g.json")
    meta_path(path).write_text('{"environmnet": {}}')
    with pytest.raises(InputError) as caught:
        read_golden(path)
    assert caught.value.field == "environmnet"


def test_missing_golden_file(tmp_path):
    with pytest.raises(InputError, match="cannot read golden"):
        read_golden(tmp_path / "none.json")


# ---- comparison ---------------------------------------------------------------------------------------------
def test_identical_run_passes_both_modes():
    golden = read_golden(H100)
    for mode in ("exact", "megatron"):
        result = compare(golden, copy_metrics(golden), mode)
        assert result.passed and result.first_divergence is None
    megatron = compare(golden, copy_metrics(golden), "megatron")
    assert [m.metric for m in megatron.metrics] == ["lm loss", "num-zeros"]
    exact = compare(golden, copy_metrics(golden), "exact")
    assert "iteration-time" not in [m.metric for m in exact.metrics]


def test_one_value_off_by_one_percent_passes_megatron_fails_exact():
    golden = read_golden(H100)
    actual = copy_metrics(golden)
    actual["lm loss"][37] *= 1.01
    megatron = compare(golden, actual, "megatron")
    assert megatron.passed
    assert megatron.first_divergence is None  # 1% is inside lm loss's 5%
    exact = compare(golden, actual, "exact")
    assert not exact.passed
    assert exact.first_divergence == ("lm loss", 37, golden.metrics["lm loss"][37], actual["lm loss"][37])
    assert "lm loss mismatch at step 37" in exact.summary()


def test_many_values_off_by_ten_percent_fail_megatron():
    golden = read_golden(H100)
    actual = copy_metrics(golden)
    for step in range(50, 60):
        actual["lm loss"][step] *= 1.10
    result = compare(golden, actual, "megatron")
    assert not result.passed
    lm_loss = result.metrics[0]
    assert lm_loss.failing_steps == tuple(range(50, 60)) and lm_loss.allowed_failures == 1
    assert result.first_divergence[:2] == ("lm loss", 50)


def test_megatron_allows_one_failing_step_per_hundred():
    golden = read_golden(H100)
    actual = copy_metrics(golden)
    actual["lm loss"][80] *= 1.10
    result = compare(golden, actual, "megatron")
    assert result.passed and result.first_divergence[:2] == ("lm loss", 80)
    assert "within the allowed failing steps" in result.summary()
    actual["num-zeros"][3] *= 1.5
    actual["num-zeros"][4] *= 1.5
    assert not compare(golden, actual, "megatron").passed


def test_only_golden_steps_are_compared():
    a100 = read_golden(A100)
    actual = {"lm loss": {step: a100.metrics["lm loss"].get(step, 999.0) for step in range(1, 101)}}
    result = compare(a100, actual, "exact", metrics=("lm loss",))
    assert result.passed and result.metrics[0].compared_steps == 21


def test_missing_steps_fail_exact():
    golden = Golden({"lm loss": {1: 1.0, 2: 2.0, 3: 3.0}})
    result = compare(golden, {"lm loss": {1: 1.0, 2: 2.0}}, "exact")
    assert not result.passed
    assert result.metrics[0].missing_steps == (3,)
    assert result.first_divergence == ("lm loss", 3, 3.0, None)
    assert not compare(golden, {}, "exact").passed


def test_exact_is_bitwise():
    golden = Golden({"lm loss": {1: 0.30000000000000004}})
    assert not compare(golden, {"lm loss": {1: 0.3}}, "exact").passed
    assert compare(golden, {"lm loss": {1: 0.1 + 0.2}}, "exact").passed
    assert not compare(Golden({"x": {1: 0.0}}), {"x": {1: -0.0}}, "exact").passed


def test_earliest_divergence_across_metrics():
    golden = Golden({"lm loss": {1: 1.0, 2: 2.0, 3: 3.0}, "grad norm": {1: 5.0, 2: 5.0, 3: 5.0}})
    actual = {"lm loss": {1: 1.0, 2: 2.0, 3: 3.5}, "grad norm": {1: 5.0, 2: 5.5, 3: 5.0}}
    assert compare(golden, actual, "exact").first_divergence == ("grad norm", 2, 5.0, 5.5)


def test_tolerance_overrides_and_adds_metrics():
    golden = Golden({"lm loss": {1: 10.0}, "grad norm": {1: 2.0}})
    actual = {"lm loss": {1: 10.3}, "grad norm": {1: 2.5}}
    assert compare(golden, actual, "megatron").passed  # grad norm is not compared by default
    loose = compare(golden, actual, "megatron", tolerance={"lm loss": 0.01})
    assert loose.metrics[0].tolerance == 0.01 and loose.metrics[0].failing_steps == (1,)
    strict = compare(golden, actual, "megatron", tolerance={"grad norm": 0.1})
    assert [m.metric for m in strict.metrics] == ["lm loss", "grad norm"]
    # one failing step is allowed under 100 steps, so grad norm's single miss passes; the evidence stays
    assert strict.passed and strict.first_divergence[:2] == ("grad norm", 1)


def test_golden_without_the_metric_fails():
    result = compare(Golden({"num-zeros": {1: 3.0}}), {"lm loss": {1: 1.0}}, "megatron")
    assert not result.passed and "no values" in result.metrics[0].note


def test_iteration_time_is_compared_as_a_median():
    golden = Golden({"lm loss": {1: 1.0}, "iteration-time": {s: 0.2 for s in range(2, 60)}})
    fast_outlier = {s: 0.2 for s in range(2, 60)} | {31: 9.0}
    result = compare(golden, {"lm loss": {1: 1.0}, "iteration-time": fast_outlier}, "megatron",
                     metrics=("iteration-time",))
    assert result.passed and result.metrics[0].compared_steps == 16
    slow = {s: 0.3 for s in range(2, 60)}
    assert not compare(golden, {"iteration-time": slow}, "megatron", metrics=("iteration-time",)).passed


def test_unknown_mode():
    with pytest.raises(ValueError):
        compare(Golden({}), {}, "approximately")


# ---- fingerprints and finding ---------------------------------------------------------------------------
def test_environment_fingerprint_without_torch():
    code = ("import sys, json; from chaos.golden import environment_fingerprint\n"
            "print(json.dumps(environment_fingerprint('cpu')))\n"
            "assert 'torch' not in sys.modules\n")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    env = json.loads(out)
    assert env["device"] == "cpu" and env["python"].count(".") == 2
    assert env["torch"] and env["megatron-core"] and env["machine"]
    assert len(env["cpu_flags_hash"]) == 16
    assert env == environment_fingerprint("cpu")


def test_workload_fingerprint_follows_the_numbers_not_the_paths():
    config = GPT3Config.from_mapping({"preset": "tiny_cpu"}, "t.yaml")
    same = GPT3Config.from_mapping({"preset": "tiny_cpu", "save_dir": "/elsewhere", "nodes": 2}, "t.yaml")
    other = GPT3Config.from_mapping({"preset": "tiny_cpu", "train_iters": 13}, "t.yaml")
    assert workload_fingerprint(config) == workload_fingerprint(same)
    assert workload_fingerprint(config) != workload_fingerprint(other)
    assert len(workload_fingerprint(config)) == 64


def test_environment_mismatches():
    env = environment_fingerprint("cpu")
    assert environment_mismatches(env, dict(env)) == {}
    patched = dict(env, python=env["python"].rsplit(".", 1)[0] + ".999", cpu_model="another name")
    assert environment_mismatches(patched, env) == {}  # patch release and CPU name do not matter
    assert set(environment_mismatches(dict(env, torch="0.0.1", device="cuda"), env)) == {"torch", "device"}


def test_find_golden(tmp_path):
    env = environment_fingerprint("cpu")
    assert find_golden(tmp_path / "goldens", "fp", env) is None
    goldens = tmp_path / "goldens"
    write_golden(Golden({"lm loss": {1: 1.0}}), goldens / "no_meta.json")
    write_golden(Golden({"lm loss": {1: 1.0}}, GoldenMeta(env, "other", created="2026-01-01T00:00:00+00:00")),
                 goldens / "other_workload.json")
    write_golden(Golden({"lm loss": {1: 1.0}}, GoldenMeta(dict(env, torch="1.0"), "fp", created="2026-01-02")),
                 goldens / "old_torch.json")
    assert find_golden(goldens, "fp", env) is None
    write_golden(Golden({"lm loss": {1: 1.0}}, GoldenMeta(env, "fp", created="2026-01-03T00:00:00+00:00")),
                 goldens / "older.json")
    write_golden(Golden({"lm loss": {1: 2.0}}, GoldenMeta(env, "fp", created="2026-02-01T00:00:00+00:00")),
                 goldens / "newer.json")
    assert find_golden(goldens, "fp", env) == goldens / "newer.json"


def test_find_golden_copes_with_megatron_files_beside_ours(tmp_path):
    shutil.copy(H100, tmp_path / "upstream.json")
    assert find_golden(tmp_path, "fp", environment_fingerprint("cpu")) is None


def test_a_golden_named_explicitly_is_used_even_for_another_workload(tmp_path):
    """`--golden old.json` on a changed job answers "does it still match the old run?": compared, not
    re-recorded (only another machine's environment makes an exact golden unusable)."""
    from chaos.golden import environment_fingerprint, new_meta
    from chaos.runner import choose_golden
    from chaos.scenario import load_scenario_text

    scenario = load_scenario_text("workload: {world_size: 2, tensor_parallel: 2, train_iters: 4}\n", "t.yaml")
    path = tmp_path / "old.json"
    write_golden(Golden(metrics={"lm loss": {1: 7.0}}, meta=new_meta(environment_fingerprint("cpu", scenario.facts.cpu_pins), "0" * 64)), path)
    said: list[str] = []
    choice = choose_golden(scenario, tmp_path / "run", path, None, say=said.append)
    assert choice.path == path and not choice.recorded_here
    assert "another workload" in said[0] and not (tmp_path / "run").exists()


def test_megatron_allowance_never_covers_a_missing_step_or_a_nan():
    """Megatron's allowance (1 failing step under 100) is for noise; a step the run never reported, or a NaN
    where the golden is finite, fails whatever the allowance."""
    golden = Golden(metrics={"lm loss": {s: 10.0 - 0.01 * s for s in range(1, 51)}})
    noisy = {"lm loss": {s: v * (1.2 if s == 7 else 1.0) for s, v in golden.metrics["lm loss"].items()}}
    assert compare(golden, noisy, "megatron").passed  # one step off by 20 %: within the allowance
    missing_last = {"lm loss": {s: v for s, v in golden.metrics["lm loss"].items() if s != 50}}
    assert not compare(golden, missing_last, "megatron").passed
    nan = {"lm loss": {**golden.metrics["lm loss"], 9: float("nan")}}
    assert not compare(golden, nan, "megatron").passed
    both_nan = Golden(metrics={"lm loss": {**golden.metrics["lm loss"], 9: float("nan")}})
    assert compare(both_nan, nan, "megatron").passed  # the golden diverged there too


def test_an_infinite_tolerance_is_refused():
    from chaos.errors import InputError
    from chaos.scenario import load_scenario_text

    with pytest.raises(InputError) as caught:
        load_scenario_text("workload: {preset: tiny_cpu}\ntolerance: {lm loss: .inf}\n", "t.yaml")
    assert caught.value.field == "tolerance.lm loss" and "check nothing" in caught.value.message


def test_pinned_cpu_numerics_make_a_golden_valid_on_another_cpu_type():
    """What is pinned is what is fingerprinted: with the gpt3 workload's pins on a CPU that can honour them,
    the CPU's own flags no longer decide whether a golden is valid; unpinned, they do."""
    from chaos.workloads.gpt3.workload import CPU_PINS

    pinned = environment_fingerprint("cpu", CPU_PINS)
    assert pinned["cpu_numerics"] == "pinned ATEN_CPU_CAPABILITY=avx2 CHAOS_CPU_ONEDNN=off MKL_CBWR=COMPATIBLE"
    other_cpu = dict(pinned, cpu_model="Intel(R) Xeon(R) Processor", cpu_flags_hash="0123456789abcdef")
    assert environment_mismatches(other_cpu, pinned) == {}
    unpinned = environment_fingerprint("cpu")
    assert unpinned["cpu_numerics"] == f"cpu flags {unpinned['cpu_flags_hash']}"
    assert set(environment_mismatches(pinned, unpinned)) == {"cpu_numerics"}
    other_unpinned = dict(unpinned, cpu_numerics="cpu flags 0123456789abcdef")
    assert set(environment_mismatches(other_unpinned, unpinned)) == {"cpu_numerics"}


def test_a_pin_the_cpu_cannot_honour_is_not_called_pinned(monkeypatch):
    from chaos import golden as golden_module

    monkeypatch.setattr(golden_module, "_cpu_info", lambda: ("old CPU", ["sse2", "avx"]))
    env = golden_module.environment_fingerprint("cpu", {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "COMPATIBLE"})
    assert env["cpu_numerics"].startswith("cpu flags ")


def test_the_ranks_get_the_pins_and_torch_honours_them(tmp_path):
    """The launch environment carries the pins, and torch in a fresh interpreter with that environment
    dispatches to the pinned kernels (on this AVX-512 machine it would otherwise pick AVX512)."""
    import subprocess
    import sys

    from chaos.scenario import load_scenario_text

    scenario = load_scenario_text("workload: {preset: tiny_cpu}\n", "t.yaml")
    spec = scenario.workload.launch(tmp_path)
    assert {k: spec.env[k] for k in scenario.facts.cpu_pins} == dict(scenario.facts.cpu_pins)
    # torch's kernels, MKL's reproducible branch (MKL_VERBOSE prints the branch it runs), oneDNN off
    code = ("import torch; from chaos.workloads.gpt3 import cpu_compat; cpu_compat.apply(); a = torch.ones(8, 8); "
            "a @ a; print(torch.backends.cpu.get_cpu_capability(), torch.backends.mkldnn.enabled)")
    done = subprocess.run([sys.executable, "-c", code], env={**__import__("os").environ, **spec.env, "MKL_VERBOSE": "1"},
                          capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "AVX2 False", done.stdout
    assert "CNR:COMPATIBLE" in done.stdout, done.stdout[-800:]


def test_golden_check_says_whether_a_golden_holds_here(tmp_path, small_golden):
    """`chaos golden check`: the small workload recorded again here against its golden (bitwise equal: exit 0),
    then against a copy with one lm loss moved by one ulp (exit 1, naming the metric and the step)."""
    import math
    import os

    from chaos.golden import meta_path
    from workload_runs import small_workload

    scenario = tmp_path / "small.yaml"
    scenario.write_text(f"workload: {small_workload()}\nfaults:\n  - at: {{step: 3, phase: backward}}\n    target: {{rank: 0}}\n"
                        "    signal: SIGKILL\n")
    repo = Path(__file__).resolve().parents[1]

    def check(golden: Path, out: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "chaos.cli", "golden", "check", str(scenario), "--golden",
                               str(golden), "--out", str(out)], capture_output=True, text=True, timeout=600,
                              cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(repo)})

    same = check(small_golden, tmp_path / "here")
    assert same.returncode == 0, same.stdout + same.stderr
    assert "lm loss        6/6 steps bitwise equal" in same.stdout and same.stdout.rstrip().endswith("BITWISE EQUAL")
    assert "checkpoints    iterations [2, 4, 6] compared entry by entry" in same.stdout
    moved = tmp_path / "moved.json"
    data = json.loads(small_golden.read_text())
    data["lm loss"]["values"]["4"] = math.nextafter(data["lm loss"]["values"]["4"], math.inf)
    moved.write_text(json.dumps(data))
    shutil.copy(meta_path(small_golden), meta_path(moved))
    different = check(moved, tmp_path / "here-2")
    assert different.returncode == 1, different.stdout + different.stderr
    assert "DIFFERENT: lm loss at step 4" in different.stdout
    missing = check(tmp_path / "nope.json", tmp_path / "here-3")
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
