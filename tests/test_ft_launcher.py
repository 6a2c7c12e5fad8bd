"""launcher: ft_launcher (NVIDIA's resiliency extension) and the faults beside a rank. The shipped scenario
(tests/test_scenarios_cpu.py runs it) shows ft_launcher's restarts end to end; here are the pieces on their
own: its log lines, the scenario fields it brings (launcher_args, job_hang_timeout_s, target.process), how the
launcher and a rank monitor are found, and that nothing else is."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from chaos import history
from chaos.errors import InfrastructureError, InputError
from chaos.ownership.processes import ProcessTable, TrackedProcess
from chaos.scenario import load_scenario_text
from chaos.scenario.load import load_scenario_mapping
from chaos.scenario.dump import scenario_to_mapping
from chaos.schedule import plan_faults
from chaos.supervisor import beside
from chaos.supervisor.control_server import ControlServer
from chaos.supervisor.job_log import JobLog
from chaos.supervisor.launcher import AttemptLaunch, torchrun_command
from workload_runs import small_workload

FT = "launcher: ft_launcher\nrestart: {by: job}\n"


def _scenario(text: str, source: str = "s.yaml"):
    return load_scenario_text(f"workload: {small_workload()}\n{text}", source)


def test_the_job_log_reads_ft_launchers_lines(tmp_path):
    """Verbatim lines of nvidia-resiliency-ext 0.4.1 on this machine: a rank monitor giving up on a rank's
    heartbeats comes first, then the agent's restart (UNHEALTHY or FAILED, whichever it saw)."""
    out = tmp_path / "agent-0.out"
    out.write_bytes(
        b"[2026-12-06 19:18:48,698] [WARNING] [RankMonServer22477@vm:1] Did not get subsequent heartbeat. "
        b"Waited 3.00 seconds.\n"
        b"[2026-12-06 19:18:48,698] [WARNING] [RankMonServer22477@vm:1] FT timeout elapsed.\n"
        b"[2026-12-06 19:20:13,794] [WARNING] [RankMonServer22904@vm:0] Did not get initial heartbeat. Waited 4.00 "
        b"seconds.\n"
        b"[2026-12-06 19:20:36,481] [WARNING] [RankMonServer22968@vm:0] Section 'step' has been open for 3.49 "
        b"seconds. Timeout is 3.00 seconds.\n"
        b"[2026-12-06 19:17:52,639] [INFO] [ft_launcher22319@vm] [default] Worker group UNHEALTHY. 2/2 attempts "
        b"left; will restart worker group\n"
        b"[2026-12-06 19:17:52,642] [WARNING] [ft_launcher22319@vm] Sending process 22326 closing signal SIGTERM\n"
        b"[2026-12-06 19:17:52,658] [INFO] [ft_launcher22319@vm] The node 'localhost_22319_0' attempts to join "
        b"the next round of the rendezvous\n")
    log = JobLog({0: out})
    seen = log.poll(7.0)
    log.close()
    assert [line.kind for line in seen] == ["heartbeat_missed", "heartbeat_missed", "heartbeat_missed", "restarting",
                                            "stopping"]


# ---- the scenario's fields ------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, where, words", [
    ("launcher_args: [--monitor-interval=1]\n", "launcher_args", "launcher: direct has none"),
    ("launcher: torchrun\nlauncher_args: --monitor-interval=1\n", "launcher_args", "expected a list"),
    ("launcher: torchrun\nlauncher_args: [monitor-interval]\n", "launcher_args[0]", "expected an option"),
    ("launcher: torchrun\nlauncher_args: ['--a=1 --b=2']\n", "launcher_args[0]", "no spaces"),
    ("launcher: torchrun\nlauncher_args: [--max-restarts=9]\n", "launcher_args[0]", "set by chaos"),
    ("launcher: torchrun\nlauncher_args: [--rdzv_endpoint=x:1]\n", "launcher_args[0]", "set by chaos"),
    ("launcher: ft_launcher\nhosts: netns\n", "hosts", "this machine only"),
    ("restart: {job_hang_timeout_s: 0}\n", "restart.job_hang_timeout_s", "> 0"),
    (FT + "launcher_args: [--ft-rank-heartbeat-timeout=soon]\n", "launcher_args", "expected seconds"),
])
def test_launcher_fields_are_validated(text, where, words):
    with pytest.raises(InputError) as raised:
        _scenario(text, "bad.yaml")
    assert f"bad.yaml: {where}" in str(raised.value) and words in str(raised.value), str(raised.value)


def test_the_jobs_hang_bound_is_ft_launchers_heartbeat_timeout_unless_given():
    scenario = _scenario(FT + "launcher_args: [--ft-initial-rank-heartbeat-timeout=60, --ft_rank_heartbeat_timeout=3]\n")
    assert scenario.launcher_args == ("--ft-initial-rank-heartbeat-timeout=60", "--ft_rank_heartbeat_timeout=3")
    assert scenario.restart.job_hang_timeout_s == 3.0
    given = _scenario("launcher: ft_launcher\nrestart: {by: job, job_hang_timeout_s: 7}\n"
                      "launcher_args: [--ft-rank-heartbeat-timeout=3]\n")
    assert given.restart.job_hang_timeout_s == 7.0
    assert _scenario(FT).restart.job_hang_timeout_s is None  # 0.4.1's default is 45 minutes: none worth testing
    # whoever restarts, the monitors kill a silent rank
    assert _scenario("launcher: ft_launcher\nlauncher_args: [--ft-rank-heartbeat-timeout=2]\n"
                     ).restart.job_hang_timeout_s == 2.0


@pytest.mark.parametrize("target, action, where, words", [
    ("{rank: 1, process: rank_monitor}", "signal: SIGKILL", "target.process", "launcher: ft_launcher"),
    ("{rank: 1, process: launcher}", "raise: boom", "target.process", "signal or a pause"),
    ("{node: 0, process: launcher}", "signal: SIGKILL", "target.process", "rank: N"),
    ("{rank: 1, process: agent}", "signal: SIGKILL", "target.process", "expected one of"),
])
def test_a_process_beside_a_rank_is_validated(target, action, where, words):
    with pytest.raises(InputError) as raised:
        _scenario(f"launcher: torchrun\nfaults:\n  - at: {{step: 3, phase: forward}}\n    target: {target}\n"
                  f"    {action}\n", "bad.yaml")
    assert f"bad.yaml: faults[0].{where}" in str(raised.value) and words in str(raised.value), str(raised.value)


def test_a_process_target_round_trips_and_plan_json_is_unchanged_without_one():
    scenario = _scenario(FT + "faults:\n  - at: {step: 3, phase: forward}\n    target: {rank: 1, process: rank_monitor}\n"
                              "    pause: 5\n  - at: {attempt: 2, step: 4, phase: forward}\n    target: {rank: 0}\n"
                              "    signal: SIGKILL\n")
    assert load_scenario_mapping(json.loads(json.dumps(scenario_to_mapping(scenario))), "again.yaml") == scenario
    plan = plan_faults(scenario)
    assert plan[0].target.process == "rank_monitor" and plan[1].target.process == "rank"
    assert plan[0].to_dict()["target"]["process"] == "rank_monitor"
    assert "process" not in plan[1].to_dict()["target"]  # plan.json as it was before processes beside ranks
    assert "rank 1's rank monitor: pause 5s" in plan[0].describe()
    assert type(plan[0]).from_dict(json.loads(json.dumps(plan[0].to_dict()))) == plan[0]
    assert type(plan[1]).from_dict(json.loads(json.dumps(plan[1].to_dict()))) == plan[1]


# ---- the launch -----------------------------------------------------------------------------------------------
def test_ft_launcher_runs_torchruns_command_line_with_the_scenarios_arguments(tmp_path):
    scenario = _scenario("launcher: ft_launcher\nlauncher_args: [--ft-rank-heartbeat-timeout=3]\n")
    spec = scenario.workload.launch(tmp_path)
    launch = AttemptLaunch(1, tmp_path / "attempts" / "01", 29500, "sock", elastic="ft_launcher",
                           launcher_args=scenario.launcher_args)
    argv = torchrun_command(spec, launch, 0, "id", "127.0.0.1:29500")
    assert argv[1:3] == ["-m", "nvidia_resiliency_ext.fault_tolerance.launcher"]
    # the scenario's arguments go to the launcher, before the entry point (after it they would be the job's)
    assert argv.index("--ft-rank-heartbeat-timeout=3") < argv.index(spec.argv[-1])
    assert torchrun_command(spec, AttemptLaunch(1, tmp_path, 29500, "sock"), 0, "id", "e:1")[1:3] == [
        "-m", "torch.distributed.run"]


def test_the_launchers_scratch_directory_is_in_the_run_dir_and_short_enough_for_sockets(tmp_path):
    """ft_launcher binds its rank monitors' sockets in TMPDIR: a Unix socket path must fit in 108 bytes,
    and the run dir may be deep."""
    deep = tmp_path / ("d" * 90)
    server = ControlServer(deep)
    deep.mkdir()
    try:
        path = server.short_dir("launcher-tmp", room=36)
        assert len(path) + 36 < 108
        assert os.path.samefile(path, deep / "launcher-tmp")
    finally:
        server.close()
    shallow = ControlServer(tmp_path)  # with room to spare: the plain path
    assert shallow.short_dir("launcher-tmp", room=0) == str((tmp_path / "launcher-tmp").resolve())


def test_a_link_where_the_launchers_scratch_directory_goes_is_refused(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "launcher-tmp").symlink_to(elsewhere)
    with pytest.raises(InfrastructureError, match="not a directory of the run"):
        ControlServer(run_dir).short_dir("launcher-tmp", room=36)


def test_an_attempt_directory_the_job_never_came_to_is_not_an_attempt(tmp_path):
    """by: job makes every attempt's directory at the launch; the job used two of four."""
    for number in (1, 2, 3, 4):
        history.attempt_dir(tmp_path, number).mkdir(parents=True)
    for number in (1, 2):
        (history.attempt_dir(tmp_path, number) / "rank-0.jsonl").write_text(
            json.dumps({"event": "start", "rank": 0, "attempt": number, "t": 0.0, "mono": 0.0}) + "\n")
    (tmp_path / "supervisor.jsonl").write_text("".join(
        json.dumps({"event": history.ATTEMPT_START, "attempt": n, "t": 0.0, "mono": 0.0}) + "\n" for n in (1, 2, 3)))
    run = history.load_run_history(tmp_path)
    assert [a.index for a in run.attempts] == [1, 2, 3]  # 3 started (and wrote nothing); 4 never did


# ---- the processes beside a rank ------------------------------------------------------------------------------
AGENT = textwrap.dedent("""
    import os, socket, subprocess, sys, time
    path = sys.argv[1]
    if os.fork() == 0:  # the rank monitor: listens where the rank is told to connect
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(path)
        server.listen(1)
        time.sleep(60)
        os._exit(0)
    while not os.path.exists(path):
        time.sleep(0.01)
    rank = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                            env={**os.environ, "FT_RANK_MONITOR_IPC_SOCKET": path})
    print(rank.pid, flush=True)
    time.sleep(60)
""")


def _start_agent(tmp_path: Path, name: str) -> tuple[subprocess.Popen, int]:
    agent = subprocess.Popen([sys.executable, "-c", AGENT, str(tmp_path / name)], stdout=subprocess.PIPE,
                             start_new_session=True, text=True)
    return agent, int(agent.stdout.readline())


def _stop(popen: subprocess.Popen) -> None:
    os.killpg(popen.pid, 9)
    popen.wait()


def test_a_ranks_launcher_and_rank_monitor_are_found_from_the_kernels_view(tmp_path):
    agent, rank_pid = _start_agent(tmp_path, "rmon0.socket")
    # a stranger listening on the same kind of path, outside the launch: never a candidate
    stranger_path = str(tmp_path / "stranger.socket")
    stranger = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stranger.bind(stranger_path)
    stranger.listen(1)
    table = ProcessTable()
    try:
        table.launched = [TrackedProcess.from_popen(agent, role="agent", node=0)]
        rank = TrackedProcess.adopt(rank_pid, __import__("psutil").Process(rank_pid).create_time(), role="rank",
                                    rank=0, node=0)
        launcher, why = beside.find("launcher", rank, table)
        assert launcher is table.launched[0] and why == ""
        monitor, why = beside.find("rank_monitor", rank, table)
        assert monitor is not None and why == "", why
        assert monitor.pid not in (agent.pid, rank_pid) and monitor.role == "rank_monitor" and monitor.rank == 0
        assert __import__("psutil").Process(monitor.pid).ppid() == agent.pid
        monitor.close()
        # a rank told to connect to the stranger has no monitor of this launch
        other, other_pid = _start_agent(tmp_path, "rmon1.socket")
        try:
            adopted = TrackedProcess.adopt(other_pid, __import__("psutil").Process(other_pid).create_time(),
                                           role="rank", rank=1, node=0)
            found, why = beside.find("rank_monitor", adopted, table)
            assert found is None and "no launched agent" in why
            adopted.close()
        finally:
            _stop(other)
        rank.close()
    finally:
        stranger.close()
        for process in table.launched:
            process.close()
        _stop(agent)


def test_a_rank_without_a_monitor_socket_has_no_rank_monitor(tmp_path):
    agent = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                              "r = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
                              "print(r.pid, flush=True); time.sleep(60)"],
                             stdout=subprocess.PIPE, start_new_session=True, text=True,
                             env={k: v for k, v in os.environ.items() if k != "FT_RANK_MONITOR_IPC_SOCKET"})
    rank_pid = int(agent.stdout.readline())
    table = ProcessTable()
    try:
        table.launched = [TrackedProcess.from_popen(agent, role="agent", node=0)]
        time.sleep(0.05)
        rank = TrackedProcess.adopt(rank_pid, __import__("psutil").Process(rank_pid).create_time(), role="rank",
                                    rank=0, node=0)
        found, why = beside.find("rank_monitor", rank, table)
        assert found is None and "FT_RANK_MONITOR_IPC_SOCKET" in why
        rank.close()
    finally:
        for process in table.launched:
            process.close()
        _stop(agent)


# ---- the launcher itself killed ------------------------------------------------------------------------------
@pytest.fixture
def golden_cache(small_golden):
    return small_golden.parent


def test_a_killed_launcher_restarts_nothing_and_its_workers_run_on_until_chaos_stops_them(tmp_path, golden_cache):
    """SIGKILL of torchrun's agent mid-step: its workers (each in a session of its own, no death signal) run
    on without it, nothing of the job restarts anything, and the run ends job_gave_up, the check naming the
    launcher's death and the processes it left running."""
    from chaos.runner import run_scenario

    scenario = load_scenario_text(f"""
name: launcher-killed
workload: {small_workload()}
launcher: torchrun
restart: {{by: job, max_restarts: 2}}
faults:
  - at: {{step: 3, phase: forward}}
    target: {{rank: 1, process: launcher}}
    signal: SIGKILL
""", "test")
    result = run_scenario(scenario, out_dir=tmp_path / "run", golden_cache=golden_cache, say=lambda text: None)
    run = history.load_run_history(result.run_dir)
    landed = run.supervisor_events(history.FAULT_LANDED)
    agent = run.supervisor_events(history.ATTEMPT_START)[0]["processes"][0]
    assert [(r["process"], r["pid"], r["rank"]) for r in landed] == [("launcher", agent["pid"], 1)]
    assert run.supervisor_events(history.RUN_END)[-1]["outcome"] == "job_gave_up"
    budget = next(c for c in result.checks if c["name"] == "restart_budget")
    assert budget["status"] == "fail" and "exited of SIGKILL" in budget["detail"], budget
    workers = {r["pid"] for r in run.supervisor_events(history.RANK_HELLO)}
    assert workers <= set(budget["evidence"]["left_running"]), budget  # orphans chaos had to stop
    assert next(c for c in result.checks if c["name"] == "faults_landed")["status"] == "pass"


@pytest.mark.soak
def test_nvrx_rank_monitors_still_abort_after_two_failed_starts(tmp_path, golden_cache):
    """docs/findings/nvrx-rank-monitor-aborted.md: still there in the installed nvidia-resiliency-ext (when this
    fails, the bug is fixed: update the finding)."""
    from chaos.runner import run_scenario
    from chaos.scenario import load_scenario

    repro = Path(__file__).resolve().parents[1] / "docs" / "findings" / "nvrx_rank_monitor_aborted_repro.yaml"
    result = run_scenario(load_scenario(repro), out_dir=tmp_path / "run", golden_cache=golden_cache,
                          say=lambda text: None)
    assert result.verdict == "fail"
    assert history.load_run_history(result.run_dir).supervisor_events(history.RUN_END)[-1]["outcome"] == "job_gave_up"
    launcher_output = (result.run_dir / "attempts" / "01" / "agent-0.out").read_text(errors="replace")
    assert "current state: RankMonitorState.ABORTED" in launcher_output
