"""`chaos selftest`: how a planted bug's run is judged (caught, missed, inert, not applicable, undecided, error),
the score and exit codes, the reports, the workload wrapper and the ranks' records read as untrusted input;
then real selftests on CPU: chaos's own trainer (probe) and the unmodified Megatron-LM stand-in (black box),
each with a control run, a bug caught, a bug inert and one not applicable. The full bug set on the flagship and
on the stand-in is `soak`-marked (about 10 real runs each)."""

from __future__ import annotations

import json
import os
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import pytest

from chaos import cli
from chaos.errors import InputError
from chaos.selftest import bugs as catalog
from chaos.selftest.outcome import (
    CAUGHT, ERROR, INERT, MISSED, NOT_APPLICABLE, UNDECIDED, BugOutcome, classify,
)
from chaos.selftest.planted import ENV_BUG, ENV_CHECKPOINTS, ENV_LOG, ENV_TRACKER, HOOK_DIR, PLANT_DIR, PlantEvidence, PlantedWorkload, read_evidence
from chaos.selftest.run import MARKER, SelftestResult, bug_names, check_out

REPO = Path(__file__).resolve().parents[1]


# ---- the catalog and the injection layer agree -----------------------------------------------------------------
def test_every_catalogued_bug_is_implemented_in_the_injection_layer():
    sys.path.insert(0, str(HOOK_DIR))
    try:
        import chaos_plants
    finally:
        sys.path.remove(str(HOOK_DIR))
    assert tuple(chaos_plants.BUGS) == catalog.NAMES
    assert len(catalog.NAMES) >= 8
    for bug in catalog.BUGS:
        assert bug.does and bug.stands_for, bug.name


def test_bug_names_default_to_all_and_refuse_unknown_ones():
    assert bug_names(None) == catalog.NAMES
    assert bug_names(" rng_not_restored ,adam_step_reset") == ("rng_not_restored", "adam_step_reset")
    with pytest.raises(InputError, match="did you mean rng_not_restored"):
        bug_names("rng_not_restord")
    with pytest.raises(InputError, match="distinct"):
        bug_names("adam_step_reset,adam_step_reset")


def test_a_cuda_bug_is_not_applicable_to_a_cpu_job_before_anything_runs():
    facts = SimpleNamespace(device="cpu")
    assert "no CUDA generator" in catalog.BY_NAME["cuda_rng_not_restored"].not_applicable(facts)
    assert catalog.BY_NAME["rng_not_restored"].not_applicable(facts) is None
    assert catalog.BY_NAME["cuda_rng_not_restored"].not_applicable(SimpleNamespace(device="cuda")) is None


# ---- judging one bug's run ---------------------------------------------------------------------------------------
def _result(verdict: str, checks=(), infrastructure_error=None):
    return SimpleNamespace(verdict=verdict, run_dir=Path("/runs/x"),
                           checks=[{"name": n, "status": s, "detail": d} for n, s, d in checks],
                           report={"extra": {"infrastructure_error": infrastructure_error}})


def _evidence(**fields) -> PlantEvidence:
    evidence = PlantEvidence(processes={101, 102}, loads=2)
    for key, value in fields.items():
        setattr(evidence, key, value)
    return evidence


def _no_compare():
    raise AssertionError("compared with the control although the run did not pass")


def test_a_bug_that_acted_and_failed_a_check_is_caught_with_the_first_evidence():
    result = _result("fail", [("trajectory", "fail", "lm loss diverges at step 4"), ("resume_point", "pass", ""),
                              ("checkpoint_state", "fail", "rng differs")])
    outcome = classify("rng_not_restored", result, _evidence(acted=["rank 0: set back"]), _no_compare)
    assert outcome.verdict == CAUGHT
    assert outcome.checks == ["trajectory", "checkpoint_state"]
    assert outcome.why == "trajectory: lm loss diverges at step 4"


def test_a_bug_that_changed_the_job_under_passing_checks_is_missed_and_one_that_did_not_is_inert():
    changed = SimpleNamespace(changed=True, what="lm loss at step 5: control 1.0, with the bug 1.1",
                              to_dict=lambda: {"changed": True})
    same = SimpleNamespace(changed=False, what="every logged value at 6 steps ... equal the control's",
                           to_dict=lambda: {"changed": False})
    missed = classify("adam_step_reset", _result("pass"), _evidence(acted=["rank 0: reset"]), lambda: changed)
    assert missed.verdict == MISSED and "every check passed, but lm loss at step 5" in missed.why
    inert = classify("adam_step_reset", _result("pass"), _evidence(acted=["rank 0: reset"]), lambda: same)
    assert inert.verdict == INERT and inert.why.startswith("it acted, but every logged value")


def test_a_bug_that_never_acted_is_inert_with_why_and_never_compared():
    idle = classify("older_checkpoint_loaded", _result("pass"),
                    _evidence(idle=["rank 0: the tracker named the oldest committed checkpoint (2)"]), _no_compare)
    assert idle.verdict == INERT and "oldest committed checkpoint" in idle.why
    unloaded = classify("rng_not_restored", _result("pass"), _evidence(loads=0), _no_compare)
    assert unloaded.verdict == INERT and "no checkpoint was loaded" in unloaded.why


def test_what_the_selftest_cannot_tell_is_an_error_never_a_catch():
    never_loaded = classify("rng_not_restored", _result("fail", [("trajectory", "fail", "x")]),
                            PlantEvidence(), _no_compare)
    assert never_loaded.verdict == ERROR and "never loaded in a rank" in never_loaded.why
    broken = classify("rng_not_restored", _result("pass"), _evidence(failed=["rank 1: RuntimeError: boom"]), _no_compare)
    assert broken.verdict == ERROR and "could not be planted" in broken.why
    flaky = classify("rng_not_restored", _result("fail", [("trajectory", "fail", "x")]), _evidence(), _no_compare)
    assert flaky.verdict == ERROR and "although the bug never acted" in flaky.why
    undecided = classify("rng_not_restored", _result("error", [("faults_landed", "error", "did not land")]),
                         _evidence(acted=["rank 0: x"]), _no_compare)
    assert undecided.verdict == UNDECIDED and "faults_landed: did not land" in undecided.why
    na = classify("cuda_rng_not_restored", _result("pass"), _evidence(not_applicable=["rank 0: CUDA is not in use"]),
                  _no_compare)
    assert na.verdict == NOT_APPLICABLE and "CUDA is not in use" in na.why


@pytest.mark.parametrize("verdicts, min_score, code", [
    ((CAUGHT, CAUGHT, INERT, NOT_APPLICABLE), 1.0, 0),
    ((CAUGHT, MISSED), 1.0, 1),
    ((CAUGHT, MISSED), 0.5, 0),
    ((CAUGHT, UNDECIDED), 1.0, 1),
    ((CAUGHT, ERROR), 1.0, 3),
    ((INERT, NOT_APPLICABLE), 1.0, 3),  # nothing was tested
])
def test_score_and_exit_code(verdicts, min_score, code):
    result = SelftestResult("s", Path("/x"), [BugOutcome(f"b{i}", v, "") for i, v in enumerate(verdicts)],
                            min_score=min_score)
    counted = sum(v in (CAUGHT, MISSED, UNDECIDED) for v in verdicts)
    assert (result.score.caught, result.score.counted) == (verdicts.count(CAUGHT), counted)
    assert result.exit_code == code


def test_a_selftest_whose_control_did_not_pass_proves_nothing():
    assert SelftestResult("s", Path("/x"), stopped="the control run did not pass").exit_code == 3


# ---- reports ------------------------------------------------------------------------------------------------------
def test_reports_are_written_escaped_and_valid(tmp_path):
    from chaos.selftest.report import write_reports

    hostile = "<script>alert(1)</script>\x1b[31m\x00"
    result = SelftestResult("demo", tmp_path, [
        BugOutcome("rng_not_restored", CAUGHT, f"trajectory: {hostile}", checks=["trajectory"], acted=[hostile]),
        BugOutcome("adam_step_reset", MISSED, "every check passed, but x", acted=["rank 0: reset"]),
        BugOutcome("older_checkpoint_loaded", INERT, "it never acted: oldest"),
        BugOutcome("cuda_rng_not_restored", NOT_APPLICABLE, "cpu"),
        BugOutcome("first_step_skipped", ERROR, "could not be planted")],
        control=SimpleNamespace(verdict="pass", run_dir=tmp_path / "control", golden=None))
    write_reports(result)
    page = (tmp_path / "selftest.html").read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page and "\x1b" not in page
    suite = ET.parse(tmp_path / "junit.xml").getroot()
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors"), suite.get("skipped")) == ("5", "1", "1", "2")
    properties = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert properties["score"] == "1/2"
    data = json.loads((tmp_path / "selftest.json").read_text())
    assert data["score"] == {"caught": 1, "counted": 2, "fraction": 0.5, "min_score": 1.0}
    assert data["bugs"][0]["stands_for"] and data["exit_code"] == 3
    summary = (tmp_path / "summary.txt").read_text()
    assert "score 1/2 caught; not caught: adam_step_reset; could not tell: first_step_skipped" in summary
    assert "\x1b" not in summary


# ---- the workload wrapper and the ranks' records ----------------------------------------------------------------
def test_planted_workload_changes_only_the_ranks_environment(tmp_path, monkeypatch):
    from chaos.scenario import load_scenario_text
    from workload_runs import small_workload

    monkeypatch.setenv("PYTHONPATH", "/site/extra")
    scenario = load_scenario_text(f"workload: {small_workload()}\n", "t")
    planted = PlantedWorkload(scenario.workload, "adam_step_reset")
    assert planted.facts == scenario.workload.facts and planted.describe() == scenario.workload.describe()
    assert planted.fingerprint_mapping() == scenario.workload.fingerprint_mapping()
    plain = scenario.workload.launch(tmp_path / "run")
    spec = planted.launch(tmp_path / "run")
    assert spec.argv == plain.argv
    added = {k: v for k, v in spec.env.items() if plain.env.get(k) != v}
    assert added == {"PYTHONPATH": f"{HOOK_DIR}{os.pathsep}/site/extra", ENV_BUG: "adam_step_reset",
                     ENV_LOG: str((tmp_path / "run" / PLANT_DIR).resolve()),
                     ENV_CHECKPOINTS: str(spec.checkpoint_dir.resolve()), ENV_TRACKER: spec.tracker_name}
    assert (tmp_path / "run" / PLANT_DIR).is_dir()


def test_plant_records_are_read_as_untrusted_input(tmp_path):
    plant = tmp_path / PLANT_DIR
    plant.mkdir()
    (plant / "plant-1.jsonl").write_text(
        json.dumps({"event": "installed", "pid": 1, "rank": 0}) + "\n"
        + json.dumps({"event": "installed", "pid": 1, "rank": 0}) + "\n"  # exec'd trainer: same pid again
        + json.dumps({"event": "acted", "pid": 1, "rank": 0, "what": "zeroed\x1b[2J 4 tensors"}) + "\nnot json\n")
    secret = tmp_path / "secret"
    secret.write_text(json.dumps({"event": "acted", "pid": 9, "rank": 9, "what": "from a link"}) + "\n")
    (plant / "plant-2.jsonl").symlink_to(secret)
    evidence = read_evidence(tmp_path)
    assert evidence.processes == {1}
    assert evidence.acted == ["rank 0: zeroed\\x1b[2J 4 tensors"]
    assert len(evidence.unreadable) == 2  # the garbage line and the link, which is not followed
    assert read_evidence(tmp_path / "nowhere").processes == set()


# ---- the command line ---------------------------------------------------------------------------------------------
def test_cli_refuses_bad_input_with_exit_2(tmp_path, small_scenario_file, capsys):
    assert cli.main(["selftest", str(small_scenario_file), "--bugs", "rng_not_restord", "--out", str(tmp_path / "o")]) == 2
    assert "did you mean rng_not_restored" in capsys.readouterr().err
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    assert cli.main(["selftest", str(small_scenario_file), "--out", str(mine)]) == 2
    assert "holds no selftest" in capsys.readouterr().err and (mine / "notes.txt").read_text() == "keep"
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["selftest", str(small_scenario_file), "--min-score", "2"])
    assert exit_info.value.code == 2
    assert not (tmp_path / "o").exists()


def test_out_rules(tmp_path, monkeypatch):
    check_out(tmp_path / "new")
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / MARKER).write_text("x")
    check_out(earlier)  # an earlier selftest: moved aside when the new one starts
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match="current directory"):
        check_out(Path("."))


# ---- real selftests on CPU ----------------------------------------------------------------------------------------
def _real_selftest(scenario, out: Path, bugs: tuple[str, ...], golden_cache: Path):
    from chaos.selftest import run_selftest

    return run_selftest(scenario, out, bugs, golden_cache=golden_cache, say=lambda text: None)


def _first_attempt_losses(run_dir: Path) -> dict:
    from chaos.checkers import views
    from chaos.history import load_run_history

    return views.attempt_series(load_run_history(run_dir).attempts[0], "lm_loss")


def test_selftest_of_chaos_trainer_catches_inert_and_not_applicable(tmp_path, small_scenario_file, small_golden):
    """The suite's small probe scenario (2 ranks, SIGKILL mid-backward of step 3, so the restart loads iteration
    2, the only committed one): an RNG not restored is caught; an older checkpoint cannot be chosen (there is
    none), so that bug never acts and is inert; a CUDA bug does not apply on CPU and is never run."""
    from chaos.scenario import load_scenario
    from chaos.selftest.change import against_control

    scenario = load_scenario(small_scenario_file)
    result = _real_selftest(scenario, tmp_path / "selftest",
                            ("rng_not_restored", "older_checkpoint_loaded", "cuda_rng_not_restored"),
                            small_golden.parent)
    assert result.control.verdict == "pass", result.control.summary
    rng = result.outcome("rng_not_restored")
    assert rng.verdict == CAUGHT, rng
    assert {"trajectory", "checkpoint_state"} <= set(rng.checks), rng.checks
    assert any("set back" in line for line in rng.acted), rng.acted
    older = result.outcome("older_checkpoint_loaded")
    assert older.verdict == INERT and "oldest committed" in older.why, older
    cuda = result.outcome("cuda_rng_not_restored")
    assert cuda.verdict == NOT_APPLICABLE and cuda.run_dir is None and "cpu" in cuda.why
    assert (str(result.score), result.exit_code) == ("1/1", 0)
    # the first attempt loads nothing, so no bug may touch it: bitwise the control's
    control_dir = result.control.run_dir
    for bug in ("rng_not_restored", "older_checkpoint_loaded"):
        assert _first_attempt_losses(tmp_path / "selftest" / "bugs" / bug) == _first_attempt_losses(control_dir)
    # the comparison with the control that decides "inert": a run equals itself, the RNG bug's does not
    golden = result.control.golden.golden
    assert not against_control(control_dir, control_dir, golden, "cpu", {}).changed
    assert against_control(control_dir, tmp_path / "selftest" / "bugs" / "rng_not_restored", golden, "cpu", {}).changed
    for name in ("selftest.json", "summary.txt", "junit.xml", "selftest.html"):
        assert (tmp_path / "selftest" / name).is_file()


MEGATRON_LIKE = REPO / "tests" / "trainers" / "megatron_like.py"


def megatron_like_scenario(faults: str, launcher: str = "direct", checks: str = "all"):
    from chaos.scenario import load_scenario_text

    return load_scenario_text(f"""
name: selftest_megatron_like
launcher: {launcher}
workload:
  kind: megatron_lm
  script: {MEGATRON_LIKE}
  nproc_per_node: 2
  device: cpu
  env: {{OMP_NUM_THREADS: "1"}}
  args: [--tensor-model-parallel-size, 2, --num-layers, 4, --hidden-size, 128, --num-attention-heads, 4,
         --seq-length, 128, --micro-batch-size, 2, --global-batch-size, 8, --ckpt-format, fsdp_dtensor, --mock-data]
  train_iters: 8
  save_interval: 2
restart: {{max_restarts: 4}}
checks: {checks}
faults:
{faults}
""", "selftest-test")


ONE_KILL_AFTER_5 = """
  - at: {step: 5}
    target: {rank: 0}
    signal: SIGKILL
"""


def test_selftest_of_an_unmodified_trainer_followed_from_outside(tmp_path, chaos_golden_cache):
    """The Megatron-LM stand-in, which knows nothing of chaos: the bugs are planted through its import path only
    (its checkout is untouched), and caught from its log lines and its checkpoints."""
    scenario = megatron_like_scenario(ONE_KILL_AFTER_5)
    result = _real_selftest(scenario, tmp_path / "selftest", ("adam_moments_zeroed", "older_checkpoint_loaded"),
                            chaos_golden_cache)
    assert result.control.verdict == "pass", result.control.summary
    moments = result.outcome("adam_moments_zeroed")
    assert moments.verdict == CAUGHT and "checkpoint_state" in moments.checks, moments
    older = result.outcome("older_checkpoint_loaded")
    assert older.verdict == CAUGHT and "resume_point" in older.checks, older
    assert any("told 2" in line for line in older.acted), older.acted
    assert result.exit_code == 0 and str(result.score) == "2/2"


def test_selftest_under_torchrun_finds_what_weak_checks_miss(tmp_path, chaos_golden_cache):
    """torchrun's agents start the ranks (and restart nothing: chaos does): the layer rides in the environment
    through the agent into each worker. The scenario leaves out the state checks: a shifted data position is
    still caught by the loss, but one ulp on one tensor, which no printed loss shows, is *missed*, and the
    selftest says what changed (the checkpoint entry, against the control run) and fails (exit 1)."""
    checks = "[trajectory, resume_point, steps_lost, data_order, faults_landed, no_survivors, restart_budget]"
    scenario = megatron_like_scenario(ONE_KILL_AFTER_5, launcher="torchrun", checks=checks)
    result = _real_selftest(scenario, tmp_path / "selftest", ("data_shifted_one_sample", "one_ulp_one_tensor"),
                            chaos_golden_cache)
    assert result.control.verdict == "pass", result.control.summary
    shifted = result.outcome("data_shifted_one_sample")
    assert shifted.verdict == CAUGHT and "trajectory" in shifted.checks, shifted
    assert any("read as" in line for line in shifted.acted), shifted.acted
    ulp = result.outcome("one_ulp_one_tensor")
    assert ulp.verdict == MISSED, ulp
    assert "every check passed, but parameter" in ulp.why and "differs" in ulp.why, ulp.why
    assert (str(result.score), result.exit_code) == ("1/2", 1)


# ---- the full bug set (soak: about ten real runs each) ------------------------------------------------------------
@pytest.mark.soak
def test_full_selftest_of_the_flagship(tmp_path, chaos_golden_cache):
    from chaos.scenario import load_scenario

    scenario = load_scenario(REPO / "scenarios" / "gpt3_mcore_tp2_zero3_resume_fsdp_dtensor.yaml")
    result = _real_selftest(scenario, tmp_path / "selftest", catalog.NAMES, chaos_golden_cache)
    print(result.summary)
    assert result.control.verdict == "pass"
    for outcome in result.outcomes:  # every bug that changed the job is caught; none could not be told
        assert outcome.verdict in (CAUGHT, INERT, NOT_APPLICABLE), (outcome.bug, outcome.verdict, outcome.why)
    assert result.outcome("cuda_rng_not_restored").verdict == NOT_APPLICABLE
    assert result.score.caught >= 7 and result.exit_code == 0, result.summary


@pytest.mark.soak
def test_full_selftest_of_the_megatron_lm_standin(tmp_path, chaos_golden_cache):
    scenario = megatron_like_scenario(ONE_KILL_AFTER_5 + """
  - at: {step: 6, phase: checkpoint.shard, index: 1, attempt: 2}
    target: {rank: 1}
    signal: SIGKILL
""")
    result = _real_selftest(scenario, tmp_path / "selftest", catalog.NAMES, chaos_golden_cache)
    print(result.summary)
    assert result.control.verdict == "pass"
    for outcome in result.outcomes:
        assert outcome.verdict in (CAUGHT, INERT, NOT_APPLICABLE), (outcome.bug, outcome.verdict, outcome.why)
    assert result.score.caught >= 7 and result.exit_code == 0, result.summary
