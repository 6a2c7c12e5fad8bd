"""NVIDIA's in-process restart (the gpt3 workload's `inprocess_restarts`) under restart.by: job: the job re-enters
its training function in the same processes, each entry its next attempt. Two real runs (each a few tens of
seconds on 2 cores): the shipped scenario, recovered bitwise in the same pids; and a job with a planted bug
whose re-entry does not load (Megatron-LM issue #2774), then killed outright, which in-process restart cannot
recover. The rest are the pieces on their own."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from chaos import control, golden, history, preflight
from chaos import probe as probe_module
from chaos.checkers import run_check
from chaos.errors import InputError
from chaos.runner import run_scenario
from chaos.scenario import load_scenario_text
from synthetic_runs import SyntheticRun
from workload_runs import small_workload

RAISE = '"RuntimeError: CUDA error: an illegal memory access was encountered"'


def needs_nvrx(scenario) -> None:
    reason = preflight.in_process_unavailable(scenario.facts)
    if reason:
        pytest.skip(reason)


def check(result, name: str) -> dict:
    return next(c for c in result.checks if c["name"] == name)


# The shipped scenario (an exception and a hang, both recovered in the same processes) runs once, in
# tests/test_scenarios_cpu.py, which asserts what it shows about in-process restart.


# ---- what in-process restart cannot recover, and a re-entry that goes back too far --------------------------
@pytest.fixture(scope="module")
def regressed_then_killed(tmp_path_factory, golden_cache):
    """The raise is recovered in-process, but the re-entered function does not load (bug inprocess_no_load):
    it starts again from iteration 1 though iteration 2 was committed. Then a SIGKILL of rank 1 in that
    entry: a dead process cannot re-enter anything, and torchrun (--max-restarts=0) ends the job."""
    scenario = load_scenario_text(f"""
name: inprocess-regressed-then-killed
workload: {small_workload(', inprocess_restarts: 2, bugs: [inprocess_no_load]')}
launcher: torchrun
restart: {{by: job, max_restarts: 2}}
faults:
  - at: {{step: 3, phase: backward}}
    target: {{rank: 1}}
    raise: {RAISE}
  - at: {{attempt: 2, step: 2, phase: forward}}
    target: {{rank: 1}}
    signal: SIGKILL
""", "test")
    needs_nvrx(scenario)
    return run_scenario(scenario, out_dir=tmp_path_factory.mktemp("inprocess-killed") / "run",
                        golden_cache=golden_cache, say=lambda text: None)


def test_an_in_process_restart_that_does_not_load_fails_recovery_progress(regressed_then_killed):
    progress = check(regressed_then_killed, "recovery_progress")
    assert progress["status"] == "fail", progress
    assert "attempt 2, an in-process restart, went back to iteration 0 though iteration 2 was committed" in \
        progress["detail"], progress["detail"]
    assert progress["evidence"]["in_process_regressions"] == [
        {"attempt": 2, "resumed_from": 0, "newest_committed": 2}]
    assert check(regressed_then_killed, "resume_point")["status"] == "fail"


def test_a_killed_rank_ends_an_in_process_job(regressed_then_killed):
    run = history.load_run_history(regressed_then_killed.run_dir)
    assert [r["outcome"] for r in run.supervisor_events(history.RUN_END)] == ["job_gave_up"]
    killed = [r for r in run.supervisor_events(history.RANK_EXIT) if r.get("signal") == "SIGKILL"]
    assert [(r["attempt"], r["rank"]) for r in killed] == [(2, 1)], killed
    budget = check(regressed_then_killed, "restart_budget")
    assert budget["status"] == "fail" and "job_gave_up" in budget["detail"], budget
    assert check(regressed_then_killed, "faults_landed")["status"] == "pass"
    assert check(regressed_then_killed, "no_survivors")["status"] == "pass"


# ---- the pieces -------------------------------------------------------------------------------------------
def test_a_rank_re_entered_n_times_is_the_launchs_attempt_plus_n(tmp_path):
    base = {control.ENV_ATTEMPT: "1", control.ENV_HISTORY_DIR: str(tmp_path / "attempts" / "01"),
            control.ENV_RUN_DIR: str(tmp_path), control.ENV_RESTARTS_BY: "job"}
    assert control.rank_attempt(base) == (1, str(tmp_path / "attempts" / "01"))
    assert control.rank_attempt(base, reentries=2) == (3, str(history.attempt_dir(tmp_path, 3)))
    # both layers in one process would give two attempts one number: refused, never written
    with pytest.raises(ValueError, match="nested restart layers"):
        control.rank_attempt({**base, control.ENV_LAUNCHER_RESTARTS: "1"}, reentries=1)
    with pytest.raises(ValueError, match="restart.by: job"):
        control.rank_attempt({**base, control.ENV_RESTARTS_BY: ""}, reentries=1)


class FakeSupervisor:
    """A control socket that answers every hello with an empty plan and keeps each connection."""

    def __init__(self, path: str) -> None:
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen()
        self.connections: list[tuple[socket.socket, dict]] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        for _ in range(2):
            connection, _ = self.listener.accept()
            hello = control.LineReader(connection).read_message()
            self.connections.append((connection, hello))
            control.send(connection, {"type": "plan", "holds": []})


def test_a_re_entered_probe_closes_its_attempt_and_says_hello_again_as_the_next(tmp_path, monkeypatch):
    with tempfile.TemporaryDirectory(prefix="chaos-") as short:  # a Unix socket path has ~100 bytes
        path = os.path.join(short, "control")
        supervisor = FakeSupervisor(path)
        for name, value in {control.ENV_ATTEMPT: "1", control.ENV_HISTORY_DIR: str(tmp_path / "attempts" / "01"),
                            control.ENV_RUN_DIR: str(tmp_path), control.ENV_RESTARTS_BY: "job",
                            control.ENV_SOCKET: path, control.ENV_RUN_TOKEN: "token", "RANK": "1"}.items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv(control.ENV_LAUNCHER_RESTARTS, raising=False)
        monkeypatch.setattr(probe_module, "_PROBE", None)
        first = probe_module.get_probe()
        second = probe_module.reenter(1)
        try:
            assert probe_module.get_probe() is second and second.attempt == 2
            supervisor.thread.join(10)
            (old, hello1), (_, hello2) = supervisor.connections
            assert (hello1["attempt"], hello2["attempt"]) == (1, 2)
            assert hello1["pid"] == hello2["pid"] == os.getpid()  # the same process, a new connection
            old.settimeout(10)
            assert old.recv(1) == b""  # the failed attempt's connection is closed
            before = (tmp_path / "attempts" / "01" / "rank-1.jsonl").read_text()
            first.event("late")  # the old probe writes nothing more
            assert (tmp_path / "attempts" / "01" / "rank-1.jsonl").read_text() == before
            records = history.read_jsonl(tmp_path / "attempts" / "02" / "rank-1.jsonl")
            assert [(r["event"], r.get("reentry"), r.get("what")) for r in records] == [
                ("start", 1, None), ("busy", None, "startup")]
            with pytest.raises(ValueError):
                probe_module.reenter(0)
        finally:
            second.close()
            supervisor.listener.close()


@pytest.mark.parametrize("restart, where", [
    ("restart: {by: chaos, max_restarts: 2}", "workload.inprocess_restarts"),
    ("launcher: torchrun\nrestart: {by: job, max_restarts: 3}", "restart.max_restarts"),
    ("launcher: torchrun\nrestart: {by: job, max_restarts: 2, job_hang_timeout_s: 9}", "restart.job_hang_timeout_s"),
])
def test_in_process_restarts_are_validated(restart, where):
    with pytest.raises(InputError) as raised:
        load_scenario_text(f"workload: {small_workload(', inprocess_restarts: 2')}\n{restart}\n", "bad.yaml")
    assert f"bad.yaml: {where}" in str(raised.value), str(raised.value)


def test_in_process_restarts_read_with_the_job_restarting_and_share_the_plain_jobs_golden():
    scenario = load_scenario_text(f"workload: {small_workload(', inprocess_restarts: 2')}\nlauncher: torchrun\n"
                                  "restart: {by: job, max_restarts: 2}\n", "ok.yaml")
    assert scenario.restart.job_hang_timeout_s == 5.0  # the wrapper's soft timeout is the job's hang detection
    plain = load_scenario_text(f"workload: {small_workload()}\n", "ok.yaml")
    assert golden.workload_fingerprint(scenario.workload) == golden.workload_fingerprint(plain.workload)
    assert plain.workload.facts.in_process is None
    launch = plain.workload.launch(Path(tempfile.mkdtemp(prefix="chaos-launch-")))
    assert not launch.in_process and "TORCH_CPP_LOG_LEVEL" not in launch.env


def test_a_job_without_in_process_restarts_imports_nothing_of_nvrx():
    """The trainer as every other run imports it (torch, megatron-core, the trainer): NVRx is not among them."""
    code = "import sys, chaos.workloads.gpt3.train; print(sorted(m for m in sys.modules if 'resiliency' in m))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "CHAOS_MEGATRON_COMPILE": "off"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


def synthetic_in_process_run(tmp_path, resume_from: int) -> SyntheticRun:
    """Attempt 1 saves 4 and 8 and is interrupted at step 9; attempt 2 is an in-process re-entry resuming at
    `resume_from`."""
    run = SyntheticRun(tmp_path)
    fault = run.fault("f1", step=9, phase="backward", ranks=(1,))
    run.attempt(1, resume_from=0, last_step=8, end="killed", fault=fault)
    run.attempt(2, resume_from=resume_from, last_step=12, end="complete", start={"by": "job", "in_process": True})
    run.finish()
    return run


def test_recovery_progress_fails_an_in_process_restart_behind_the_newest_checkpoint(tmp_path):
    behind = run_check(synthetic_in_process_run(tmp_path / "behind", resume_from=4).context(), "recovery_progress")
    assert behind.status == "fail", behind.detail
    assert behind.evidence["in_process_regressions"] == [{"attempt": 2, "resumed_from": 4, "newest_committed": 8}]
    newest = run_check(synthetic_in_process_run(tmp_path / "newest", resume_from=8).context(), "recovery_progress")
    assert newest.status == "pass", newest.detail
