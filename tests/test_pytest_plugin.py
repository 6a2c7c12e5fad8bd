"""The pytest plugin, driven through real pytest sessions (pytester) with the runner stood in for by a
conftest implementing the plugin's `pytest_chaos_run_scenario` hook (no training: milliseconds), plus one
real end-to-end run through the chaos_run fixture."""

from __future__ import annotations

import json
import time
import xml.etree.ElementTree as ET

import pytest

from workload_runs import small_workload

FAKE_RUNNER = r'''
import json
from pathlib import Path

import pytest

from chaos.runner import RunResult

CALLS = Path(__file__).parent / "calls.jsonl"


def fake_report(scenario, run_dir, seed):
    broken = bool(scenario.workload.config.bugs)
    checks = [{"name": "faults_landed", "status": "pass", "detail": "every planned fault landed", "evidence": {}}]
    if broken:
        checks.insert(0, {"name": "trajectory", "status": "fail",
                          "detail": "lm loss diverges from the golden at step 3: golden=10.5, actual=10.75",
                          "evidence": {"first_divergence": {"step": 3, "golden": 10.5, "actual": 10.75, "attempt": 2}}})
    return {"scenario": scenario.name, "verdict": "fail" if broken else "pass", "checks": checks, "restarts": 1,
            "faults": [{"planned": {"id": "f1", "trigger": {"step": 3, "phase": "backward"}},
                        "landed": {"rank": 1, "attempt": 1, "step": 3, "phase": "backward", "signal": "SIGKILL"}}],
            "extra": {"seed": seed}}


@pytest.hookimpl(tryfirst=True)
def pytest_chaos_run_scenario(config, scenario, out_dir, seed, golden_cache):
    with CALLS.open("a") as calls:
        calls.write(json.dumps({"name": scenario.name, "train_iters": scenario.train_iters, "seed": seed,
                                "out_dir": str(out_dir), "golden_cache": str(golden_cache)}) + "\n")
    report = fake_report(scenario, out_dir, seed)
    return RunResult(report["verdict"], Path(out_dir), report, 0 if report["verdict"] == "pass" else 1,
                     summary=f"fake {report['verdict']}")


@pytest.hookimpl(tryfirst=True)
def pytest_chaos_run_selftest(config, scenario, out_dir, bugs, seed, golden_cache):
    from chaos.selftest import BugOutcome, SelftestResult

    with CALLS.open("a") as calls:
        calls.write(json.dumps({"selftest": scenario.name, "bugs": list(bugs), "seed": seed, "out_dir": str(out_dir),
                                "train_iters": scenario.train_iters}) + "\n")
    verdicts = ["caught", "missed", "inert"]
    return SelftestResult(scenario.name, Path(out_dir), [BugOutcome(bug, verdicts[i % 3], f"why {bug}")
                                                         for i, bug in enumerate(bugs)])


@pytest.hookimpl(tryfirst=True)
def pytest_chaos_record_golden(config, scenario, out_path, work_dir):
    Path(out_path).write_text("{}")
    with CALLS.open("a") as calls:
        calls.write(json.dumps({"record": str(out_path), "name": scenario.name}) + "\n")
    return True
'''

SCENARIO = """description: one kill.
workload: %s
restart: {max_restarts: 3}
faults:
  - at: {step: 3, phase: backward}
    target: {rank: 1}
    signal: SIGKILL
"""


@pytest.fixture
def project(pytester):
    pytester.makeconftest(FAKE_RUNNER)
    (pytester.path / "scenarios").mkdir()
    (pytester.path / "scenarios" / "kill.yaml").write_text(SCENARIO % small_workload())
    (pytester.path / "scenarios" / "broken.yaml").write_text(SCENARIO % small_workload(", bugs: [no_rng_restore]"))
    return pytester


def calls(pytester) -> list[dict]:
    path = pytester.path / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_markers_are_registered_with_signature_and_example(project):
    result = project.runpytest("--markers")
    result.stdout.fnmatch_lines(["*@pytest.mark.chaos(scenario, seed=None, selftest=False, bugs=None, min_score=None, "
                                 "**overrides)*Example*",
                                 "*@pytest.mark.soak*--chaos-soak-minutes*", "*@pytest.mark.gpu*CUDA*"])
    project.makepyfile("""
        import pytest
        @pytest.mark.chaos("scenarios/kill.yaml")
        @pytest.mark.soak
        @pytest.mark.gpu
        def test_marked():
            pass
    """)
    project.runpytest("--strict-markers", "--co").assert_outcomes()  # collection succeeds: no unknown marker


def test_chaos_run_fixture_applies_overrides_and_seed_precedence(project):
    test_file = project.makepyfile("""
        def test_run(chaos_run, tmp_path):
            result = chaos_run("scenarios/kill.yaml", **{"workload.train_iters": 8})
            assert result.verdict == "pass" and result.checks and result.faults
            assert result.run_dir.parent == tmp_path and result.run_dir.is_dir()
            second = chaos_run("scenarios/kill.yaml", seed=11)
            assert second.run_dir != result.run_dir
    """)
    project.runpytest(test_file, "--chaos-seed", "5").assert_outcomes(passed=1)
    first, second = calls(project)
    assert first["train_iters"] == 8 and first["seed"] == 5  # --chaos-seed when the call gives none
    assert second["train_iters"] == 6 and second["seed"] == 11  # the call's seed wins
    assert first["golden_cache"].endswith("chaos-goldens")


def test_marker_gives_scenario_and_seed_and_out_dir_option(project):
    out = project.path / "chaos-runs"
    test_file = project.makepyfile("""
        import pytest
        @pytest.mark.chaos("scenarios/kill.yaml", seed=3, **{"workload.train_iters": 4})
        def test_marked(chaos_result):
            assert chaos_result.verdict == "pass"
    """)
    project.runpytest(test_file, f"--chaos-out={out}", "--chaos-seed=9").assert_outcomes(passed=1)
    (call,) = calls(project)
    assert call["seed"] == 3 and call["train_iters"] == 4  # the marker's seed beats --chaos-seed
    assert call["out_dir"].startswith(str(out))


def test_selftest_fixture_and_marker_give_the_score(project):
    test_file = project.makepyfile("""
        import pytest

        def test_fixture(chaos_selftest):
            result = chaos_selftest("scenarios/kill.yaml", bugs=["rng_not_restored"], **{"workload.train_iters": 4})
            assert str(result.score) == "1/1" and result.exit_code == 0 and result.outcome("rng_not_restored").why

        @pytest.mark.chaos("scenarios/kill.yaml", selftest=True, bugs=["rng_not_restored", "adam_step_reset"],
                           min_score=0.5, seed=7)
        def test_marked(chaos_result):
            assert str(chaos_result.score) == "1/2" and chaos_result.exit_code == 0  # 1/2 reaches min_score 0.5

        def test_unknown_bug(chaos_selftest):
            chaos_selftest("scenarios/kill.yaml", bugs=["rng_not_restord"])
    """)
    result = project.runpytest(test_file, "--junitxml=report.xml")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*bad selftest*rng_not_restord*did you mean rng_not_restored*"])
    first, second = calls(project)
    assert first["bugs"] == ["rng_not_restored"] and first["train_iters"] == 4
    assert second["bugs"] == ["rng_not_restored", "adam_step_reset"] and second["seed"] == 7
    assert second["train_iters"] == 6  # selftest, bugs and min_score are not scenario overrides
    properties = {p.get("name"): p.get("value") for p in ET.parse(project.path / "report.xml").iter("property")}
    assert properties["chaos.selftest.score"] in ("1/1", "1/2")
    assert properties["chaos.selftest.adam_step_reset"] == "missed: why adam_step_reset"


def test_scenario_files_are_collected_as_tests(project):
    (project.path / "other").mkdir()
    (project.path / "other" / "anywhere.yaml").write_text(SCENARIO % small_workload())
    (project.path / "other" / "not_a_scenario.yaml").write_text("jobs: {build: 1}\n")
    run_copy = project.path / "scenarios" / "old-run"
    run_copy.mkdir()
    (run_copy / "scenario.yaml").write_text(SCENARIO % small_workload())
    (run_copy / "plan.json").write_text("{}")
    result = project.runpytest("--co", "-q")
    collected = {line for line in result.stdout.lines if "::" in line}
    assert collected == {"scenarios/broken.yaml::broken", "scenarios/kill.yaml::kill", "other/anywhere.yaml::anywhere"}


def test_failing_scenario_shows_checks_evidence_and_run_dir_not_a_traceback(project):
    result = project.runpytest("scenarios/", "--chaos-out", str(project.path / "runs"))
    result.assert_outcomes(passed=1, failed=1)
    text = result.stdout.str()
    result.stdout.fnmatch_lines([
        "*chaos verdict 'fail' (expected 'pass')*",
        "*FAIL trajectory: lm loss diverges from the golden at step 3*",
        "*first diverging step 3: golden=10.5 actual=10.75 (attempt 2)*",
        f"*run directory: {project.path / 'runs'}*broken*",
    ])
    assert "Traceback" not in text and "def runtest" not in text and "pytest_plugin.py" not in text


def test_expect_in_a_test_function_gives_the_same_failure_text(project):
    project.makepyfile("""
        def test_broken(chaos_run):
            chaos_run("scenarios/broken.yaml", expect="pass")
    """)
    result = project.runpytest("test_expect_in_a_test_function_gives_the_same_failure_text.py")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*FAIL trajectory*step 3*", "*first diverging step 3*", "*run directory:*"])


def test_invalid_scenario_file_fails_with_the_field_path(project):
    (project.path / "scenarios" / "typo.yaml").write_text(SCENARIO.replace("SIGKILL", "SIGKIL") % small_workload())
    result = project.runpytest("scenarios/typo.yaml")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*faults[[]0[]].signal*did you mean SIGKILL?*"])


def test_gpu_scenarios_skip_without_cuda_saying_why(project, monkeypatch):
    import chaos.pytest_plugin as plugin

    monkeypatch.setattr(plugin, "cuda_missing_reason", lambda: "needs CUDA: torch.cuda.is_available() is False")
    (project.path / "scenarios" / "gpu").mkdir()
    (project.path / "scenarios" / "gpu" / "big.yaml").write_text(SCENARIO % small_workload())
    project.makepyfile("""
        import pytest
        @pytest.mark.gpu
        def test_needs_cuda():
            raise AssertionError("must not run")
    """)
    result = project.runpytest("scenarios/gpu", "test_gpu_scenarios_skip_without_cuda_saying_why.py", "-rs")
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines(["*needs CUDA: torch.cuda.is_available() is False*"])
    assert calls(project) == []


def test_soak_tests_run_only_when_asked(project):
    test_file = project.makepyfile("""
        import pytest
        @pytest.mark.soak
        def test_long(chaos_settings):
            print("minutes", chaos_settings.soak_minutes)
    """)
    project.runpytest(test_file, "-rs").stdout.fnmatch_lines(["*soak test: runs only with --chaos-soak-minutes M > 0 or -m soak*"])
    project.runpytest(test_file, "--chaos-soak-minutes", "2").assert_outcomes(passed=1)
    project.runpytest(test_file, "-m", "soak").assert_outcomes(passed=1)


def test_bad_settings_name_the_option_or_ini_key(project):
    result = project.runpytest("--chaos-seed", "abc")
    assert result.ret != 0
    result.stderr.fnmatch_lines(["*--chaos-seed: expected an integer, got 'abc'*"])
    project.makeini("[pytest]\nchaos_soak_minutes = -1\n")
    result = project.runpytest()
    result.stderr.fnmatch_lines(["*chaos_soak_minutes (ini file): expected a value >= 0, got '-1'*"])
    project.makeini("[pytest]\nchaos_soak_minutes = 3\n")
    test_file = project.makepyfile("""
        def test_settings(chaos_settings):
            assert chaos_settings.soak_minutes == 1.5  # the command line beats the ini file
    """)
    project.runpytest(test_file, "--chaos-soak-minutes=1.5").assert_outcomes(passed=1)


def test_junit_xml_has_verdict_restarts_faults_and_checks(project):
    xml_path = project.path / "junit.xml"
    project.runpytest("scenarios/", f"--junitxml={xml_path}")
    root = ET.parse(xml_path).getroot()
    cases = {case.get("name"): case for case in root.iter("testcase")}
    properties = {p.get("name"): p.get("value") for p in cases["broken"].iter("property")}
    assert properties["chaos.verdict"] == "fail" and properties["chaos.restarts"] == "1"
    assert json.loads(properties["chaos.fault.f1.landed"])["phase"] == "backward"
    assert "step" in json.loads(properties["chaos.fault.f1.planned"])["trigger"]
    assert properties["chaos.check.trajectory"].startswith("fail: lm loss diverges")
    assert properties["chaos.check.faults_landed"].startswith("pass")


def test_update_goldens_records_once_per_workload_and_skips(project):
    (project.path / "scenarios" / "kill_again.yaml").write_text(SCENARIO % small_workload())
    result = project.runpytest("scenarios/kill.yaml", "scenarios/kill_again.yaml", "--chaos-update-goldens", "-rs")
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines(["*--chaos-update-goldens: golden recorded to *goldens*tiny_cpu-*.json*"])
    records = [c for c in calls(project) if "record" in c]
    assert len(records) == 1 and records[0]["record"].startswith(str(project.path / "goldens"))
    assert not [c for c in calls(project) if "record" not in c]  # nothing was compared


def test_real_run_through_the_fixture(chaos_run, small_golden, small_scenario_file, tmp_path, request):
    """End to end: real ranks, a real SIGKILL, the real supervisor and checkers (~15-60 s)."""
    started = time.monotonic()
    result = chaos_run(small_scenario_file, seed=1)
    elapsed = time.monotonic() - started
    assert result.run_dir.parent == tmp_path and (result.run_dir / "report.json").is_file()
    assert result.faults and all(f["landed"] for f in result.faults), result.summary
    assert result.report["restarts"] >= 1
    names = dict(request.node.user_properties)
    assert names["chaos.verdict"] == result.verdict and "chaos.check.trajectory" in names
    assert result.verdict == "pass", result.summary
    print(f"real chaos_run: {elapsed:.1f}s")
