"""Every shipped CPU scenario, end to end through `chaos run`'s runner: real ranks, real signals, real
restarts, verdict against the golden (recorded once per workload for the whole session)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from chaos import history, preflight
from chaos.faults import straggler
from chaos.runner import run_scenario
from chaos.supervisor.hosts import netns as hosts, slurm
from chaos.scenario import load_scenario

SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"
RUN_ELSEWHERE = {"slurm_cluster.yaml": "needs a Slurm cluster to submit to: tests/test_multihost.py runs it from the "
                                       "login node of a private cluster standing in for yours"}
CPU_SCENARIOS = sorted(p.name for p in SCENARIOS.glob("*.yaml") if p.name not in RUN_ELSEWHERE)


@pytest.mark.parametrize("name", CPU_SCENARIOS)
def test_shipped_scenario_passes(name, tmp_path, golden_cache):
    scenario = load_scenario(SCENARIOS / name)
    stragglers = [f for f in scenario.faults if getattr(f, "action", None) and f.action.kind == "straggler"]
    if stragglers and straggler.unavailable_reason():
        pytest.skip(f"{name}: {straggler.unavailable_reason()}")
    if scenario.hosts == "netns" and hosts.unavailable_reason():
        pytest.skip(f"{name}: {hosts.unavailable_reason()}")
    if scenario.launcher == "slurm" and slurm.unavailable_reason():
        pytest.skip(f"{name}: {slurm.unavailable_reason()}")
    if scenario.launcher == "ft_launcher" and preflight.ft_launcher_unavailable():
        pytest.skip(f"{name}: {preflight.ft_launcher_unavailable()}")
    if preflight.in_process_unavailable(scenario.facts):
        pytest.skip(f"{name}: {preflight.in_process_unavailable(scenario.facts)}")
    result = run_scenario(scenario, out_dir=tmp_path / "run", golden_cache=golden_cache, say=lambda text: None)
    assert result.verdict == "pass", result.summary
    report = result.report
    planned = {f["planned"]["id"] for f in report["faults"]}
    landed = {f["planned"]["id"] for f in report["faults"] if f["landed"]}
    assert planned == landed, f"faults that did not land: {planned - landed}"
    assert len(report["attempts"]) >= 2 or not planned
    assert (result.run_dir / "report.json").is_file() and (result.run_dir / "report.html").is_file()
    if name == "gpt3_mcore_tp2_zero3_resume_fsdp_dtensor.yaml":
        attempts = {a["index"]: a for a in report["attempts"]}
        # rank 2 died between two shard files of the step-8 save: iteration 4 stayed the latest and the
        # next attempt resumed from it; the partial save did not block saving iteration 8 again
        assert attempts[3]["resumed_from"] == 4, attempts
        assert (result.run_dir / "checkpoints" / "iter_0000008" / "chaos_manifest.json").is_file()
        assert not list((result.run_dir / "checkpoints").glob(".tmp*"))
        # graceful SIGTERM at step 10 saved iteration 10 and lost nothing: the last attempt resumed there
        assert attempts[max(attempts)]["resumed_from"] == 10
    if name == "torchrun_job_restarts.yaml":
        # torchrun restarted the workers three times; chaos restarted nothing and saw each recovery in its output
        run = history.load_run_history(result.run_dir)
        assert [r.get("by") for r in run.supervisor_events(history.ATTEMPT_START)] == [None, "job", "job", "job"]
        assert [r.get("by") for r in run.supervisor_events(history.TEARDOWN)] == ["job", "job", "job", None]
        assert {r["attempt"] for r in run.supervisor_events(history.JOB_RECOVERY)} == {1, 2, 3}
        assert all(c["status"] in ("pass", "skip") for c in report["checks"])
        assert {c["name"] for c in report["checks"] if c["status"] == "skip"} == {"stalls", "node_loss"}
        recoveries = report["timings"]["recovery_s"]
        assert [(r["attempt"], r["by"], r["fault_id"]) for r in recoveries] == [
            (2, "job", "f1"), (3, "job", "f2"), (4, "job", "f3")]
        assert all(0 <= r["detected_s"] < r["first_resumed_step_s"] for r in recoveries), recoveries
    if name == "inprocess_job_restarts.yaml":
        assert_in_process_recoveries(result)
    if name == "ft_launcher_job_restarts.yaml":
        # ft_launcher restarted the workers three times: after a death, after its rank monitor killed a rank
        # whose heartbeats stopped (f2), and after a stopped rank monitor left its rank blocked (f3)
        run = history.load_run_history(result.run_dir)
        assert [r.get("by") for r in run.supervisor_events(history.ATTEMPT_START)] == [None, "job", "job", "job"]
        recovery = run.supervisor_events(history.JOB_RECOVERY)
        assert {r["attempt"] for r in recovery if r["kind"] == "heartbeat_missed"} >= {2, 3}, recovery
        monitor = next(r for r in run.supervisor_events(history.FAULT_LANDED) if r["fault_id"] == "f3")
        assert monitor["process"] == "rank_monitor" and monitor["rank"] == 1
        workers = {r["pid"] for r in run.supervisor_events(history.RANK_HELLO)}
        assert monitor["pid"] not in workers  # the monitor, not a worker, was stopped
        ended = next(r for r in run.supervisor_events(history.STALL_ENDED) if r["fault_id"] == "f3")
        assert ended["resumed"] == [monitor["pid"]]  # and continued after its 5 s, whatever the attempts did
        stalls = next(c for c in report["checks"] if c["name"] == "stalls")
        assert [row.get("expected", "").startswith("the job's own hang detection")
                for row in stalls["evidence"]["stalls"]] == [True, True], stalls
        recoveries = report["timings"]["recovery_s"]
        assert [(r["attempt"], r["fault_id"]) for r in recoveries] == [(2, "f1"), (3, "f2"), (4, "f3")]


def assert_in_process_recoveries(result) -> None:
    """NVRx's in-process restart recovered an exception and a hang in the same processes: each re-entry is
    the job's next attempt, its running ranks carried on (not survivors), timed from the wrapper's own line."""
    assert {c["name"] for c in result.checks if c["status"] == "skip"} == {"node_loss"}, result.summary
    run = history.load_run_history(result.run_dir)
    starts = run.supervisor_events(history.ATTEMPT_START)
    assert [(s.get("by"), s.get("in_process")) for s in starts] == [(None, None), ("job", True), ("job", True)]
    pids: dict = {}
    for hello in run.supervisor_events(history.RANK_HELLO):
        pids.setdefault(hello["rank"], set()).add(hello["pid"])
    assert all(len(seen) == 1 for seen in pids.values()), pids  # every attempt's rank r is one process
    teardowns = run.supervisor_events(history.TEARDOWN)
    assert [t.get("by") for t in teardowns] == ["job", "job", None]
    for teardown in teardowns[:2]:  # the job's own: its running ranks go on as the next attempt's, not survivors
        assert teardown["survivors"] == [] and teardown["in_process"] is True, teardown
        assert sorted(teardown["carried"]) == sorted(pid for seen in pids.values() for pid in seen), teardown
    # the launcher restarts nothing: the in-process wrapper is the job's only recovery layer
    agent = (result.run_dir / "attempts" / "01" / "agent-0.out").read_text(errors="replace")
    assert re.search(r"max_restarts\s*:\s*0\b", agent), agent[:2000]
    monitors = sorted(p.name for p in (result.run_dir / "attempts" / "01").glob("inprocess-monitor-*.log"))
    assert monitors == ["inprocess-monitor-0.log", "inprocess-monitor-1.log"]
    recoveries = result.report["timings"]["recovery_s"]
    assert [(r["attempt"], r["by"], r["layer"], r["fault_id"], r["detected_by"]) for r in recoveries] == [
        (2, "job", "in_process", "f1", "wrapper log line"), (3, "job", "in_process", "f2", "wrapper log line")]
    assert all(0 <= r["detected_s"] < r["first_resumed_step_s"] for r in recoveries), recoveries
    stalls = next(c for c in result.checks if c["name"] == "stalls")["evidence"]["stalls"]
    # the 8 s pause outlasts the wrapper's 5 s soft timeout: the job's own hang detection restarts it
    assert "job's own hang detection" in stalls[0]["expected"], stalls
