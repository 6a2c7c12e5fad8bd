"""The per-host agent (chaos.agent) and the controller's side of it (chaos.supervisor.hosts.agents), as real
processes over TCP on 127.0.0.1: the token, starting and owning ranks, exits, signals only to what the agent
started, teardown, an agent that outlives its controller by nothing; and the clocks: offsets measured and
rank records put on the supervisor's clock. `pytest -k multihost` selects these with the other multi-host
tests; the end-to-end run on a Slurm cluster is in test_multihost.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chaos import history
from chaos.agent import protocol
from chaos.supervisor.hosts.agents import AgentServer, RemoteProcess, teardown_all

TOKEN = "test-token-1234"
SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]


def start_agent(server: AgentServer, node: int = 0, token: str = TOKEN, attempt: int = 1) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "chaos.agent", f"--controller={server.address}", f"--node={node}",
                             f"--attempt={attempt}"],
                            env={**os.environ, "CHAOS_AGENT_TOKEN": token}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_for(condition, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def launch(link, tmp_path: Path, ranks: list[int]) -> list[RemoteProcess]:
    orders = [{"rank": r, "argv": SLEEPER, "env": {"CHAOS_RUN_TOKEN": TOKEN, "RANK": str(r)}, "cwd": None,
               "output": str(tmp_path / f"rank-{r}.out")} for r in ranks]
    answer = link.request({"type": "launch", "attempt": 1, "ranks": orders})
    assert answer["error"] is None, answer
    processes = []
    for started in answer["launched"]:
        process = RemoteProcess(link, started["pid"], started["rank"], link.info.node)
        link.processes[process.pid] = process
        processes.append(process)
    return processes


def test_multihost_agent_starts_its_ranks_signals_only_them_and_tears_them_down(tmp_path):
    server = AgentServer(TOKEN, "127.0.0.1")
    agent = start_agent(server)
    bystander = subprocess.Popen(SLEEPER)  # a process the agent did not start, on its host
    try:
        links, refused = server.gather(1, 1, 30.0, lambda: None if agent.poll() is None else "agent exited")
        assert refused == [] and set(links) == {0}
        link = links[0]
        assert link.info.pid == agent.pid and link.info.address == "127.0.0.1" and link.info.port > 0
        assert abs(link.info.mono_offset_s) <= link.info.rtt_s  # one machine: one clock, within the round trip
        rank0, rank1 = launch(link, tmp_path, [0, 1])
        assert alive(rank0.pid) and alive(rank1.pid)
        assert (Path(f"/proc/{rank0.pid}/environ").read_bytes().split(b"\0").count(b"RANK=0") == 1)

        # an order to signal a pid the agent did not start is refused; the process is untouched
        assert link.request({"type": "signal", "pid": bystander.pid, "signal": "SIGKILL"})["delivered"] is False
        assert bystander.poll() is None

        assert rank0.send("SIGKILL")
        assert wait_for(lambda: (link.pump(), rank0.reported)[1])
        assert rank0.exit_status() == (-9, "SIGKILL") and not rank0.send("SIGTERM")

        answers = teardown_all(links, grace_s=2.0)
        assert answers[0]["sigterm"] == [rank1.pid] and answers[0]["survivors"] == [] and answers[0]["leaked"] == []
        assert rank1.reported and rank1.exit_status() == (-15, "SIGTERM")
        assert agent.wait(timeout=10) == 0
        assert not alive(rank1.pid) and bystander.poll() is None
    finally:
        bystander.kill()
        agent.kill()
        agent.wait()
        server.close()


def test_multihost_agent_sweeps_what_an_earlier_attempt_left_on_its_host_before_starting(tmp_path):
    """A rank of an earlier attempt whose agent was lost (killed with its host cut off) still runs: the next
    agent on that host finds it by the run token, kills it and says so in its hello."""
    leftover = subprocess.Popen(SLEEPER, env={**os.environ, "CHAOS_RUN_TOKEN": TOKEN})
    unrelated = subprocess.Popen(SLEEPER, env={**os.environ, "CHAOS_RUN_TOKEN": "another-run"})
    server = AgentServer(TOKEN, "127.0.0.1")
    agent = start_agent(server)
    try:
        links, _ = server.gather(1, 1, 30.0, lambda: None)
        assert [item["pid"] for item in links[0].info.swept] == [leftover.pid]
        assert leftover.wait(timeout=10) == -9 and unrelated.poll() is None
        teardown_all(links, grace_s=1.0)
        assert agent.wait(timeout=10) == 0
    finally:
        for process in (leftover, unrelated, agent):
            process.kill()
            process.wait()
        server.close()


@pytest.mark.parametrize("token, attempt, why", [
    ("another-run", 1, "not this run's token"),
    (TOKEN, 2, "an agent of attempt 2 during attempt 1"),  # a late agent of another step
])
def test_multihost_agent_of_another_run_or_attempt_is_refused(tmp_path, token, attempt, why):
    server = AgentServer(TOKEN, "127.0.0.1")
    agent = start_agent(server, token=token, attempt=attempt)
    try:
        links, refused = server.gather(1, 1, 1.5, lambda: None)
        assert links == {} and len(refused) == 1 and why in refused[0]
        assert agent.wait(timeout=10) == 1
        assert f"the controller refused this agent: {why}" in agent.stdout.read()
    finally:
        agent.kill()
        agent.wait()
        server.close()


def test_multihost_agent_adopts_only_this_attempts_slurm_tasks_on_its_host(tmp_path):
    """launcher: slurm on a cluster: a rank is a Slurm task (slurmstepd's child, not the agent's). The agent
    takes it as its own only when its environment carries the run's token and this attempt; then it owns
    it: signals reach it, its exit is reported, teardown ends it."""
    import socket

    server = AgentServer(TOKEN, "127.0.0.1")
    agent = start_agent(server)
    control = socket.create_server(("127.0.0.1", 0))  # stands for the ranks' TCP control socket
    task = earlier = None
    try:
        links, _ = server.gather(1, 1, 30.0, lambda: None)
        link = links[0]
        # started after the agent's hello, as the ranks' step is (before it, the agent's sweep takes them)
        connected = [sys.executable, "-c", "import socket, sys, time; "
                     "s = socket.create_connection(('127.0.0.1', int(sys.argv[1]))); time.sleep(120)",
                     str(control.getsockname()[1])]
        task = subprocess.Popen(connected, env={**os.environ, "CHAOS_RUN_TOKEN": TOKEN, "CHAOS_ATTEMPT": "1"})
        earlier = subprocess.Popen(SLEEPER, env={**os.environ, "CHAOS_RUN_TOKEN": TOKEN, "CHAOS_ATTEMPT": "0"})
        refused = link.request({"type": "adopt", "pid": earlier.pid, "rank": 1})
        assert refused["adopted"] is False and "nor a task of attempt 1 on this host" in refused["reason"]
        assert link.request({"type": "signal", "pid": earlier.pid, "signal": "SIGKILL"})["delivered"] is False
        # the hello's pid is adopted only as the holder of the connection the hello came on
        accepted, _ = control.accept()
        hello_came_on = {"rank_end": list(accepted.getpeername()), "controller_end": list(accepted.getsockname())}
        assert link.request({"type": "adopt", "pid": task.pid, "rank": 0})["adopted"] is False
        adopted = link.request({"type": "adopt", "pid": task.pid, "rank": 0, "connection": hello_came_on})
        assert adopted["adopted"] is True and adopted["reason"] is None
        rank = RemoteProcess(link, task.pid, 0, 0)
        link.processes[task.pid] = rank
        assert rank.send("SIGKILL") and task.wait(timeout=10) == -9
        assert wait_for(lambda: (link.pump(), rank.reported)[1])
        teardown_all(links, grace_s=1.0)
        assert earlier.wait(timeout=10) == -9  # not this attempt's: never adopted, but the teardown's sweep of
        # the host takes whatever carries the run's token
        assert agent.wait(timeout=10) == 0
    finally:
        for process in (task, earlier, agent):
            if process is not None:
                process.kill()
                process.wait()
        server.close()
        control.close()


WITH_GRANDCHILD = ("import subprocess, sys, time; child = subprocess.Popen([sys.executable, '-c', "
                   "'import time; time.sleep(120)']); open(sys.argv[1], 'w').write(str(child.pid)); time.sleep(120)")
"""A rank that starts a process of its own (a data-loader worker, torchrun's worker): no PR_SET_PDEATHSIG on it."""


@pytest.mark.parametrize("how", ["controller_gone", "agent_stopped", "agent_killed"])
def test_multihost_agent_leaves_nothing_when_its_controller_goes_or_it_is_stopped(tmp_path, how):
    """A controller that dies (its connection closes), Slurm cancelling the step (SIGTERM to the agent), or
    the agent itself SIGKILLed: every rank the agent started dies, and what the ranks started too (the
    agent's teardown, or its watchdog when the agent could do nothing)."""
    server = AgentServer(TOKEN, "127.0.0.1")
    agent = start_agent(server)
    try:
        links, _ = server.gather(1, 1, 30.0, lambda: None)
        orders = [{"rank": r, "argv": [sys.executable, "-c", WITH_GRANDCHILD, str(tmp_path / f"child-{r}")],
                   "env": {"CHAOS_RUN_TOKEN": TOKEN}, "cwd": None, "output": str(tmp_path / f"rank-{r}.out")}
                  for r in (0, 1)]
        answer = links[0].request({"type": "launch", "attempt": 1, "ranks": orders})
        ranks = [item["pid"] for item in answer["launched"]]
        assert wait_for(lambda: all((tmp_path / f"child-{r}").exists() and (tmp_path / f"child-{r}").read_text()
                                    for r in (0, 1)))
        children = [int((tmp_path / f"child-{r}").read_text()) for r in (0, 1)]
        assert all(alive(pid) for pid in ranks + children)
        if how == "controller_gone":
            links[0].close()
        elif how == "agent_stopped":
            agent.send_signal(signal.SIGTERM)
        else:
            agent.kill()
        assert agent.wait(timeout=10) == (-9 if how == "agent_killed" else 1)
        assert wait_for(lambda: not any(alive(pid) for pid in ranks + children))
    finally:
        agent.kill()
        agent.wait()
        server.close()


def test_multihost_agent_refuses_bad_use_saying_what_is_missing():
    result = subprocess.run([sys.executable, "-m", "chaos.agent", "--controller=nohost", "--attempt=1"],
                            env={k: v for k, v in os.environ.items() if k not in ("CHAOS_AGENT_TOKEN", "SLURM_NODEID")},
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "no run token: CHAOS_AGENT_TOKEN is not set" in result.stderr
    assert "no node index: pass --node N or run under srun (SLURM_NODEID)" in result.stderr
    assert "--controller: expected HOST:PORT, got 'nohost'" in result.stderr


def test_multihost_clock_offset_is_the_tightest_round_trips():
    samples = [protocol.ClockSample(sent=0.0, received=0.010, remote=105.0),   # rtt 10 ms
               protocol.ClockSample(sent=1.0, received=1.002, remote=101.001)]  # rtt 2 ms: the one kept
    best = protocol.best_offset(samples)
    assert best is samples[1] and best.offset_s == pytest.approx(100.0) and best.rtt_s == pytest.approx(0.002)


def test_multihost_rank_records_are_put_on_the_supervisors_clock(tmp_path):
    """A rank on a host whose monotonic clock is 1000 s ahead: its records are compared on the supervisor's
    clock (raw value kept); a rank on a host without a measured offset is left as written."""
    supervisor = history.HistoryWriter(history.supervisor_history_path(tmp_path))
    supervisor.write(history.AGENT_HELLO, attempt=1, node=1, host="far", mono_offset_s=1000.0)
    supervisor.close()
    far = history.HistoryWriter(history.rank_history_path(tmp_path, 1, 2), rank=2, attempt=1)
    far.write(history.START, pid=1, host="far")
    far.write(history.STEP_BEGIN, step=1)
    far.close()
    near = history.HistoryWriter(history.rank_history_path(tmp_path, 1, 0), rank=0, attempt=1)
    near.write(history.START, pid=2, host="near")
    near.close()
    raw = history.read_jsonl(history.rank_history_path(tmp_path, 1, 2))
    loaded = history.load_run_history(tmp_path).attempts[0].ranks
    assert [r["mono"] for r in loaded[2]] == pytest.approx([r["mono"] - 1000.0 for r in raw])
    assert [r["host_mono"] for r in loaded[2]] == [r["mono"] for r in raw]
    assert "host_mono" not in loaded[0][0]


def test_multihost_ranks_reach_the_supervisor_over_tcp_with_the_run_token(tmp_path):
    """On a cluster the control channel is TCP: an unmodified trainer's exec shim (and the probe, through the
    same chaos.control.connect) says hello with the run token and its host, and runs once answered."""
    import json
    import socket

    from chaos.supervisor.control_server import ControlServer

    server = ControlServer(tmp_path)
    address = server.start_tcp("127.0.0.1")
    assert address.startswith("tcp://127.0.0.1:") and server.tcp
    env = {**os.environ, "CHAOS_CONTROL_SOCKET": address, "CHAOS_RUN_TOKEN": TOKEN, "CHAOS_ATTEMPT": "3",
           "RANK": "1"}
    shim = subprocess.Popen([sys.executable, "-m", "chaos.blackbox.exec_rank", "--", sys.executable, "-c",
                             "print('trainer ran')"], env=env, stdout=subprocess.PIPE, text=True)
    try:
        server.listener.setblocking(True)
        server.listener.settimeout(30)
        connection, _ = server.listener.accept()
        hello = json.loads(connection.makefile().readline())
        assert hello == {"type": "hello", "rank": 1, "pid": shim.pid, "attempt": 3, "observation": "log",
                         "token": TOKEN, "host": socket.gethostname()}
        connection.sendall(b'{"type": "plan", "holds": []}\n')
        assert shim.wait(timeout=30) == 0 and shim.stdout.read() == "trainer ran\n"
        connection.close()
    finally:
        shim.kill()
        shim.wait()
        server.close()


def test_multihost_slurm_task_shim_records_how_its_rank_ended_and_passes_slurms_signals_on(tmp_path):
    """A Slurm task's rank is reaped by the task's shim, not by chaos: the shim writes how it ended (exit
    code, or the signal) beside its history, and passes the signals Slurm sends the task on to the rank."""
    import json

    slurm = {"SLURM_PROCID": "2", "SLURM_NTASKS": "4", "SLURM_LOCALID": "0", "SLURM_NODEID": "1", "SLURM_NNODES": "2"}
    env = {**os.environ, **slurm, "CHAOS_HISTORY_DIR": str(tmp_path)}
    shim = [sys.executable, "-m", "chaos.supervisor.hosts.slurm_task"]
    assert subprocess.run([*shim, "sh", "-c", "exit 3"], env=env, timeout=30).returncode == 3
    ended = json.loads((tmp_path / "rank-2.exit").read_text())
    assert ended["returncode"] == 3 and ended["signal"] is None

    task = subprocess.Popen([*shim, sys.executable, "-c", "import time; time.sleep(120)"], env=env)
    assert wait_for(lambda: any(p for p in os.listdir("/proc") if p.isdigit()
                                and Path(f"/proc/{p}/stat").exists() and _parent(int(p)) == task.pid))
    task.send_signal(signal.SIGTERM)  # as scancel does: the rank gets it and dies of it; the task ends alike
    assert task.wait(timeout=30) == -signal.SIGTERM
    ended = json.loads((tmp_path / "rank-2.exit").read_text())
    assert ended["returncode"] == -signal.SIGTERM and ended["signal"] == "SIGTERM" and ended["pid"] != task.pid


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None
