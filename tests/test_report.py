"""Reports from synthetic runs: report.json keys, terminal summary, JUnit XML, self-contained HTML."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

from chaos import golden as golden_module
from chaos.checkers import CheckResult, run_checks
from synthetic_runs import SyntheticRun, golden_loss, standard_run
from chaos.history import load_run_history
from chaos.report import build_report, format_summary, read_report, render_html, write_html, write_junit, write_report
from chaos.scenario.model import CHECK_NAMES

REQUIRED = {"verdict", "scenario", "run_dir", "checks", "faults", "attempts", "losses", "golden", "restarts", "timings"}


def report_for(run: SyntheticRun, golden_info=None, **overrides) -> dict:
    ctx = run.context(**overrides)
    return build_report(ctx, run_checks(ctx), "synthetic", golden_info or {"path": None, "mode": "exact"},
                        {"seed": 0})


def failing_run(tmp_path) -> SyntheticRun:
    """Resumes from an older checkpoint and diverges from step 7; a third fault never lands."""
    run = SyntheticRun(tmp_path)
    kill = run.fault("f1", step=10, phase="backward", ranks=(1,))
    run.fault("f2", step=11, phase="forward", ranks=(0,), attempt=2)
    run.attempt(1, resume_from=0, last_step=9, end="killed", fault=kill)
    run.attempt(2, resume_from=4, last_step=12, end="complete", loss=lambda s: golden_loss(s) + (0.25 if s >= 7 else 0))
    run.finish()
    return run


def test_report_json_has_the_required_keys(tmp_path):
    run = standard_run(tmp_path)
    report = report_for(run)
    assert REQUIRED <= set(report)
    assert report["verdict"] == "pass" and report["restarts"] == 2
    assert [c["name"] for c in report["checks"]] == list(CHECK_NAMES)
    assert set(report["checks"][0]) == {"name", "status", "detail", "evidence"}
    f1 = report["faults"][0]
    assert f1["planned"]["id"] == "f1" and f1["planned"]["trigger"]["step"] == 7
    assert f1["landed"]["rank"] == 1 and f1["landed"]["step"] == 7 and f1["landed"]["phase"] == "backward"
    assert f1["landed"]["attempt"] == 1 and f1["landed"]["signal"] == "SIGKILL"
    assert report["attempts"] == [
        {"index": 1, "resumed_from": 0, "first_step": 1, "last_step": 6, "exit": "crashed"},
        {"index": 2, "resumed_from": 4, "first_step": 5, "last_step": 10, "exit": "preempted"},
        {"index": 3, "resumed_from": 10, "first_step": 11, "last_step": 12, "exit": "complete"},
    ]
    assert report["losses"] == {s: golden_loss(s) for s in range(1, 13)}
    timings = report["timings"]
    assert timings["detection_latency_s"][0]["latency_s"] == 0.05
    assert timings["teardown_duration_s"] == [{"attempt": 1, "duration_s": 0.2}]
    assert [r["attempt"] for r in timings["restart_to_first_resumed_step_s"]] == [2, 3]
    assert all(r["seconds"] > 0 for r in timings["restart_to_first_resumed_step_s"])

    path = write_report(report, tmp_path)
    stored = json.loads(path.read_text())
    assert stored == read_report(tmp_path)
    assert REQUIRED <= set(stored) and stored["losses"]["7"] == golden_loss(7)


def test_hang_timings_are_measured_from_the_last_progress(tmp_path):
    from chaos.plan import RestartPolicy

    run = SyntheticRun(tmp_path, restart=RestartPolicy(max_restarts=2, hang_timeout_s=10.0))
    stop = run.fault("f1", step=5, phase="forward", ranks=(1,), signal="SIGSTOP")
    run.attempt(1, resume_from=0, last_step=4, end="hung", fault=stop, hang_after_s=12.0)
    run.attempt(2, resume_from=4, last_step=12, end="complete")
    run.finish()
    hang = [d for d in report_for(run)["timings"]["detection_latency_s"] if d["kind"] == "hang"]
    assert len(hang) == 1 and 12.0 <= hang[0]["latency_s"] < 12.5


def test_summary_names_the_verdict_faults_restarts_failures_and_run_dir(tmp_path):
    ok = format_summary(report_for(standard_run(tmp_path / "ok")))
    assert ok.splitlines()[0].startswith("chaos: PASS  synthetic")
    assert "fault f1 SIGKILL -> rank 1, attempt 1, step 7 backward" in ok
    assert "restarts: 2 of 3" in ok and f"run dir: {tmp_path / 'ok'}" in ok

    bad = format_summary(report_for(failing_run(tmp_path / "bad")))
    assert bad.startswith("chaos: FAIL")  # failing checks beat an undecided one
    assert "fault f2 SIGKILL: NOT LANDED" in bad
    assert "FAIL trajectory: lm loss diverges from the golden at step 7" in bad
    assert "FAIL resume_point: attempt 2 resumed from iteration 4, expected 8" in bad
    assert "ERROR faults_landed" in bad


def test_junit_parses_with_one_testcase_per_check(tmp_path):
    run = failing_run(tmp_path)
    report = report_for(run, golden_final_state_hash=None)
    path = write_junit(report, tmp_path / "junit.xml")
    suite = ET.parse(path).getroot()
    assert suite.tag == "testsuite" and suite.get("name") == "chaos.synthetic"
    cases = {case.get("name"): case for case in suite.iter("testcase")}
    assert list(cases) == list(CHECK_NAMES) and suite.get("tests") == str(len(CHECK_NAMES))
    assert cases["trajectory"].find("failure") is not None
    assert "step 7" in cases["trajectory"].find("failure").get("message")
    assert cases["faults_landed"].find("error") is not None
    assert cases["final_state"].find("skipped") is not None
    assert cases["restart_budget"].find("failure") is None and cases["restart_budget"].find("error") is None
    properties = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert properties["verdict"] == "fail" and properties["restarts"] == "1"
    assert properties["fault.f2"] == "not landed" and json.loads(properties["fault.f1"])["step"] == 10
    # skipped: final_state, checkpoint_state (the synthetic golden keeps no fingerprints), stalls, node_loss
    assert int(suite.get("failures")) >= 2 and suite.get("errors") == "1" and suite.get("skipped") == "4"


def test_html_is_self_contained_with_plots_and_the_checks_table(tmp_path):
    run = failing_run(tmp_path)
    golden_path = golden_module.write_golden(golden_module.Golden(metrics=run.golden_metrics()), tmp_path / "g.json")
    report = report_for(run, golden_info={"path": str(golden_path), "mode": "exact"})
    write_report(report, tmp_path)
    page = write_html(tmp_path).read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert page.count("<svg") >= 3  # the loss plot and one timeline per attempt
    assert '<table class="checks">' in page
    for name in CHECK_NAMES:
        assert f"<td>{name}</td>" in page
    assert "step 7" in page and "attempt 2" in page
    assert "stroke=\"#000\"" in page  # the golden curve, read back from the golden file
    assert "checkpoint 8 committed" in page and "f1: SIGKILL at step 10" in page
    assert "rank 1 signalled" in page and "rank 0 torn down" in page and "rank 1 held" in page
    for external in ("<script", "<link", "@import", "src=", "url("):
        assert external not in page


def test_html_marks_off_golden_points_by_the_comparison_rule(tmp_path):
    run = standard_run(tmp_path)
    golden = run.golden_metrics()
    golden["lm loss"] = {s: v * (1 + 1e-3) for s, v in golden["lm loss"].items()}  # within Megatron's 5 %
    off = 'r="4" fill="#d62728"'
    exact = report_for(run, golden_info={"path": None, "mode": "exact"})
    assert off in write_html(tmp_path, golden, report=exact, history=load_run_history(tmp_path)).read_text()
    assert not (tmp_path / "report.json").exists(), "given the report, write_html reads none"
    megatron = report_for(run, golden_info={"path": None, "mode": "megatron"})
    assert off not in render_html(megatron, golden, load_run_history(tmp_path))


def test_html_escapes_what_it_shows(tmp_path):
    run = standard_run(tmp_path)
    ctx = run.context()
    report = build_report(ctx, [CheckResult("trajectory", "fail", "<b>bad</b> & worse", {"x": "<i>"})], "s<1>",
                          {"path": None, "mode": "exact"}, {})
    page = render_html(report, run.golden_metrics(), load_run_history(tmp_path))
    assert "<b>bad</b>" not in page and "&lt;b&gt;bad&lt;/b&gt; &amp; worse" in page
    assert "s&lt;1&gt;" in page
    assert "<svg" in render_html(report)  # without history or golden it still draws the effective curve


def test_html_shows_the_distance_from_the_golden_against_the_rule_and_the_state_table(tmp_path):
    """What a loss curve cannot show: each attempt's relative distance from the golden on a log scale, the
    tolerance the comparison used (or 'exact'), restarts marked; and which checkpoint entries differed at which
    iteration (checkpoint_state's evidence)."""
    from chaos.report.divergence import difference_svg, relative_differences, state_table

    run = failing_run(tmp_path)
    ctx = run.context()
    history = load_run_history(tmp_path)
    golden_metrics = ctx.golden_metrics
    exact = report_for(run, {"path": None, "mode": "exact", "rule": "2 runs identical at 12 of 12 steps: exact"})
    svg = difference_svg(exact, golden_metrics, history)
    assert "rule: exact (any point above the band fails)" in svg and "restart 2" in svg
    assert 'fill="#d62728"' in svg  # the diverged steps are marked
    calibrated = report_for(run, {"path": None, "mode": "calibrated", "tolerance": {"lm loss": 0.03}})
    assert "tolerance 0.03 (calibrated)" in difference_svg(calibrated, golden_metrics, history)
    assert relative_differences({1: 2.0, 2: 4.0}, {1: 2.0, 2: 5.0, 3: 1.0}) == {1: 0.0, 2: 0.25}
    report = {"checks": [{"name": "checkpoint_state", "status": "fail", "detail": "RNG state x differs", "evidence": {
        "iterations": [{"iteration": 4, "attempt": 1, "compared": 10, "identical": 10, "within_spread": 0,
                        "differing": 0, "differing_keys": []},
                       {"iteration": 8, "attempt": 2, "compared": 10, "identical": 8, "within_spread": 0,
                        "differing": 2, "differing_keys": ["rng/rank_0.torch_cpu", "model/w"]}]}}]}
    table = state_table(report)
    assert '<td><code>rng/rank_0.torch_cpu</code></td><td>=</td><td style="background:#fdd">differs</td>' in table
    checks = [c for c in exact["checks"] if c["name"] != "checkpoint_state"] + report["checks"]
    page = render_html({**exact, "checks": checks}, golden_metrics, history)
    assert "Distance from the golden per step" in page and "Checkpoint state against the golden" in page
    assert "comparison rule:" in page
