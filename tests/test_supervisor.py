"""The supervisor against the pure-Python fake trainer: real processes, real signals, a few seconds each."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from chaos import history
from chaos.history import HistoryWriter, load_run_history, read_jsonl, supervisor_history_path
from chaos.faults.signals import Signal
from chaos.faults.corrupt import Corrupt
from chaos.plan import PlannedFault, RestartPolicy, Target, Trigger
from chaos.supervisor import SupervisorConfig, supervise
from chaos.supervisor import landing as landing_module
from chaos.ownership.processes import TrackedProcess, is_same_process
from chaos.workloads import LaunchSpec

REPO = Path(__file__).resolve().parents[1]
FAKE_TRAINER = REPO / "tests" / "trainers" / "fake_trainer.py"
FAST = RestartPolicy(max_restarts=1, teardown_grace_s=0.5, hang_timeout_s=1.5, startup_timeout_s=60.0)


def make_config(run_dir: Path, faults=(), restart: RestartPolicy = FAST, launcher="direct", world_size=2, nodes=None,
                train_iters=8, save_interval=3, **trainer) -> SupervisorConfig:
    run_dir.mkdir(parents=True, exist_ok=True)
    trainer_config = {"train_iters": train_iters, "save_interval": save_interval,
                      "checkpoint_dir": str(run_dir / "checkpoints"), "sync_dir": str(run_dir / "sync"), **trainer}
    (run_dir / "trainer.json").write_text(json.dumps(trainer_config))
    spec = LaunchSpec(argv=(sys.executable, str(FAKE_TRAINER), str(run_dir / "trainer.json")), world_size=world_size,
                      nodes=nodes or world_size, checkpoint_dir=run_dir / "checkpoints", train_iters=train_iters,
                      save_interval=save_interval)
    return SupervisorConfig(launch=spec, faults=tuple(faults), restart=restart, launcher=launcher, run_dir=run_dir)


def fault(fault_id="f1", signal_name="SIGKILL", ranks=(1,), step=5, phase="backward", attempt=1, index=None,
          kind="rank", node=None, after_s=None, corrupt=None) -> PlannedFault:
    action = Corrupt(corrupt) if corrupt else Signal(signal_name)
    return PlannedFault(fault_id, Trigger(step=step, phase=phase, index=index, attempt=attempt, after_s=after_s),
                        Target(kind, tuple(ranks), node=node), action)


def events(run_dir: Path, name: str) -> list[dict]:
    return [r for r in read_jsonl(supervisor_history_path(run_dir)) if r["event"] == name]


def all_pids(run_dir: Path) -> set[int]:
    pids = {p["pid"] for r in events(run_dir, "attempt_start") for p in r["processes"]}
    pids |= {r["pid"] for r in events(run_dir, "rank_hello")}
    return pids


def assert_nothing_survives(run_dir: Path) -> None:
    for record in events(run_dir, "teardown"):
        assert record["survivors"] == []
    # a pid reused by another process would not carry the run directory on its command line
    alive = [pid for pid in all_pids(run_dir) if not gone(pid) and any(str(run_dir) in part for part in _cmdline(pid))]
    assert alive == []


def gone(pid: int) -> bool:
    """Exited (or a zombie nobody reaped yet); a process exiting between two psutil calls counts as gone."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _cmdline(pid: int) -> list[str]:
    try:
        return psutil.Process(pid).cmdline()
    except psutil.Error:
        return []


def test_supervisor_never_imports_torch():
    code = ("import sys; import chaos.supervisor, chaos.faults, chaos.supervisor.launcher; "
            "assert 'torch' not in sys.modules, 'torch was imported'; print('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_sigkill_lands_exactly_and_the_restart_resumes(tmp_path):
    run = tmp_path / "run"
    outcome = supervise(make_config(run, [fault(step=5, phase="backward")]))
    assert (outcome.outcome, outcome.attempts) == ("complete", 2)
    [landed] = outcome.landed
    assert (landed["rank"], landed["step"], landed["phase"], landed["held"]) == (1, 5, "backward", True)
    history = load_run_history(run)
    rank1 = history.attempts[0].ranks[1]
    held_at = next(i for i, r in enumerate(rank1) if r["event"] == "held")
    assert (rank1[held_at]["step"], rank1[held_at]["phase"]) == (5, "backward")
    assert held_at == len(rank1) - 1, "the killed rank did something after it was held"
    [exit_record] = [r for r in events(run, "rank_exit") if r["attempt"] == 1 and r["rank"] == 1]
    assert exit_record["signal"] == "SIGKILL"
    [death] = events(run, "death_detected")
    assert death["measured_from"] == "kill" and death["detect_latency_s"] < 0.5
    loaded = next(history.attempts[1].events("checkpoint_loaded", rank=0))
    assert loaded["iteration"] == 3
    assert [e["step"] for e in history.attempts[1].events("step_begin", rank=0)] == [4, 5, 6, 7, 8]
    assert [e["outcome"] for e in events(run, "attempt_end")] == ["crashed", "complete"]
    assert_nothing_survives(run)


def test_sigterm_is_graceful_preempted_then_restarted(tmp_path):
    run = tmp_path / "run"
    outcome = supervise(make_config(run, [fault(signal_name="SIGTERM", ranks=(0,), step=4, phase="forward")]))
    assert (outcome.outcome, outcome.attempts) == ("complete", 2)
    assert [e["outcome"] for e in events(run, "attempt_end")] == ["preempted", "complete"]
    history = load_run_history(run)
    [end] = history.attempts[0].events("train_end", rank=0)
    assert (end["reason"], end["step"]) == ("preempted", 4)
    assert next(history.attempts[0].events("signal_received", rank=0))["phase"] == "forward"
    assert next(history.attempts[1].events("checkpoint_loaded", rank=1))["iteration"] == 4  # 0 steps lost
    assert events(run, "death_detected") == []


def test_sigstop_is_detected_as_a_hang_within_the_timeout(tmp_path):
    run = tmp_path / "run"
    restart = RestartPolicy(max_restarts=1, teardown_grace_s=0.5, hang_timeout_s=1.0, startup_timeout_s=60.0)
    outcome = supervise(make_config(run, [fault(signal_name="SIGSTOP", step=3, phase="optimizer")], restart=restart))
    assert outcome.outcome == "complete"
    [hang] = events(run, "hang_detected")
    assert 1.0 <= hang["idle_s"] < 1.5
    [landed] = events(run, "fault_landed")
    assert landed["held"] is True
    assert hang["mono"] - landed["mono"] < 1.0 + 0.5
    assert [e["outcome"] for e in events(run, "attempt_end")] == ["hung", "complete"]
    assert_nothing_survives(run)


def test_a_stopped_rank_is_killed_at_teardown_never_woken_into_a_graceful_save(tmp_path):
    """A SIGSTOPped rank stands for a frozen one: teardown SIGKILLs it without SIGCONT. Woken with SIGTERM
    pending (the order before), the fake trainer's rank would finish its step, agree with its peer on
    stopping and save: a checkpoint written during the teardown of a hang, which the run never asked for."""
    run = tmp_path / "run"
    restart = RestartPolicy(max_restarts=1, teardown_grace_s=1.0, hang_timeout_s=1.0, startup_timeout_s=60.0)
    # step 2: before the first save (save_interval 3), so any checkpoint of attempt 1 is a teardown save
    outcome = supervise(make_config(run, [fault(signal_name="SIGSTOP", step=2, phase="optimizer")], restart=restart))
    assert outcome.outcome == "complete"
    pid = {e["rank"]: e["pid"] for e in events(run, "rank_hello") if e["attempt"] == 1}[1]
    [first, _] = events(run, "teardown")
    assert pid in first["sigkill"] and pid not in first["sigterm"], first
    attempt1 = load_run_history(run).attempts[0]
    assert list(attempt1.events("train_end")) == [], "a rank stopped by the nemesis ended training gracefully"
    assert list(attempt1.events(history.CHECKPOINT_COMMITTED)) == [], "a checkpoint was saved during teardown"
    assert_nothing_survives(run)


@pytest.mark.parametrize("busy", [True, False], ids=["announced", "silent"])
def test_long_silent_work_announced_by_the_probe_is_not_a_hang(tmp_path, busy):
    """Every rank silent for 2.5 s at step 3, with hang_timeout_s 1: announced through probe.busy it is
    allowed startup_timeout_s and the run completes in one attempt; unannounced it is a hang."""
    run = tmp_path / "run"
    restart = RestartPolicy(max_restarts=1, teardown_grace_s=0.5, hang_timeout_s=1.0, startup_timeout_s=10.0)
    delays = [{"rank": r, "step": 3, "seconds": 2.5, "busy": busy} for r in (0, 1)]
    outcome = supervise(make_config(run, restart=restart, train_iters=5, delays=delays))
    assert outcome.outcome == "complete"
    hangs = events(run, "hang_detected")
    if busy:
        assert hangs == [] and outcome.attempts == 1
    else:
        assert len(hangs) == 1 and outcome.attempts == 2


def test_a_rank_busy_for_longer_than_startup_timeout_is_hung(tmp_path):
    run = tmp_path / "run"
    restart = RestartPolicy(max_restarts=0, teardown_grace_s=0.5, hang_timeout_s=0.5, startup_timeout_s=1.5)
    delays = [{"rank": r, "step": 2, "seconds": 30, "busy": True} for r in (0, 1)]
    started = time.monotonic()
    supervise(make_config(run, restart=restart, train_iters=4, delays=delays))
    [hang] = events(run, "hang_detected")
    assert 1.5 <= hang["idle_s"] < 3.0 and "busy: rank 0 a long silent phase" in hang["reason"], hang
    assert time.monotonic() - started < 20


def test_blocked_survivors_and_their_children_are_torn_down(tmp_path):
    run = tmp_path / "run"
    restart = RestartPolicy(max_restarts=0, teardown_grace_s=0.5, hang_timeout_s=30.0, startup_timeout_s=60.0)
    outcome = supervise(make_config(run, [fault(ranks=(2,), step=3, phase="data")], restart=restart,
                                    world_size=3, spawn_child=True))
    assert outcome.outcome == "out_of_restarts"
    [teardown] = events(run, "teardown")
    survivors_pids = {r["pid"] for r in events(run, "rank_hello") if r["rank"] in (0, 1)}
    assert survivors_pids <= set(teardown["sigterm"])
    assert survivors_pids <= set(teardown["sigkill"]), "blocked ranks ignore SIGTERM: SIGKILL after the grace"
    assert teardown["duration_s"] < 0.5 + 1.0
    assert teardown["survivors"] == []
    history = load_run_history(run)
    children = [e["pid"] for e in history.attempts[0].events("child_spawned")]
    assert len(children) == 3
    for pid in children:
        assert gone(pid)
    assert_nothing_survives(run)


def test_fault_in_attempt_two_during_checkpoint_load(tmp_path):
    run = tmp_path / "run"
    restart = RestartPolicy(max_restarts=2, teardown_grace_s=0.5, hang_timeout_s=5.0, startup_timeout_s=60.0)
    faults = [fault("first", step=5, phase="forward"),
              fault("second", ranks=(0,), step=3, phase="checkpoint.load", attempt=2)]
    outcome = supervise(make_config(run, faults, restart=restart))
    assert (outcome.outcome, outcome.attempts) == ("complete", 3)
    by_id = {r["fault_id"]: r for r in outcome.landed}
    assert (by_id["second"]["attempt"], by_id["second"]["phase"], by_id["second"]["step"]) == (2, "checkpoint.load", 3)
    history = load_run_history(run)
    assert list(history.attempts[1].events("checkpoint_loaded", rank=0)) == []
    assert next(history.attempts[2].events("checkpoint_loaded", rank=0))["iteration"] == 3


def test_a_fault_that_cannot_land_is_recorded_missed(tmp_path):
    run = tmp_path / "run"
    outcome = supervise(make_config(run, [fault(step=99, phase="forward"),
                                          fault("later", attempt=3, step=2, phase="data")]))
    assert outcome.outcome == "complete" and outcome.landed == []
    reasons = {r["fault_id"]: r["reason"] for r in outcome.missed}
    assert "never reached step 99 phase forward" in reasons["f1"]
    assert "attempt 3 never ran" in reasons["later"]


def test_restart_budget_exhausted(tmp_path):
    run = tmp_path / "run"
    faults = [fault("a", step=2, phase="data", attempt=1), fault("b", step=2, phase="data", attempt=2)]
    outcome = supervise(make_config(run, faults))
    assert (outcome.outcome, outcome.attempts) == ("out_of_restarts", 2)
    assert events(run, "run_end")[0]["outcome"] == "out_of_restarts"


def test_unsignalled_crash_is_detected_from_the_pidfd(tmp_path):
    run = tmp_path / "run"
    outcome = supervise(make_config(run, restart=FAST, crash={"rank": 0, "step": 2, "code": 7}))
    assert outcome.outcome == "complete"
    [exit_record] = [r for r in events(run, "rank_exit") if r["attempt"] == 1 and not r.get("during_teardown")]
    assert (exit_record["rank"], exit_record["returncode"], exit_record["signal"]) == (0, 7, None)
    [death] = events(run, "death_detected")
    assert death["measured_from"] == "wakeup"


def test_wall_clock_fault_records_where_the_rank_was(tmp_path):
    run = tmp_path / "run"
    outcome = supervise(make_config(run, [fault(step=None, phase=None, after_s=0.4)], train_iters=30))
    assert outcome.outcome == "complete"
    [landed] = outcome.landed
    assert landed["held"] is False
    # where the rank was by its own history when the signal went out (None only if no step had begun yet:
    # a slow start on a loaded machine); a step begun in the microseconds between the supervisor's last read
    # and its signal is the one record that may be in flight
    begun = [r["step"] for r in load_run_history(run).attempts[0].ranks[landed["rank"]]
             if r["event"] == "step_begin" and r["mono"] <= landed["mono"]]
    assert landed["step"] in ([begun[-1]] if begun else [None]) + begun[-2:-1], (landed, begun)



def test_stragglers_after_the_gather_deadline_are_each_hit_once(tmp_path, monkeypatch):
    """A fault on 3 ranks: rank 0 holds on time, rank 1 after the gather deadline landed the fault on rank 0,
    rank 2 later still. Each is signalled exactly once, and rank 1 is not kept waiting for rank 2."""
    monkeypatch.setattr(landing_module, "HOLD_GATHER_S", 0.3)
    run = tmp_path / "run"
    restart = RestartPolicy(max_restarts=1, teardown_grace_s=0.5, hang_timeout_s=10.0, startup_timeout_s=60.0)
    delays = [{"rank": 1, "step": 3, "seconds": 1.0}, {"rank": 2, "step": 3, "seconds": 2.5}]
    outcome = supervise(make_config(run, [fault(signal_name="SIGTERM", ranks=(0, 1, 2), step=3, phase="forward")],
                                    restart=restart, world_size=3, delays=delays))
    assert (outcome.outcome, outcome.attempts) == ("complete", 2)
    assert sorted(r["rank"] for r in outcome.landed) == [0, 1, 2]
    assert outcome.missed == []
    attempt = load_run_history(run).attempts[0]
    for rank in (0, 1, 2):
        assert len(list(attempt.events("signal_received", rank=rank))) == 1, f"rank {rank} signalled twice"
    landed = {r["rank"]: r for r in outcome.landed}
    [rank2_held] = attempt.events("held", rank=2)
    assert landed[0]["mono"] < landed[1]["mono"] < rank2_held["mono"], "rank 1 waited for rank 2"
    assert [e["outcome"] for e in events(run, "attempt_end")] == ["preempted", "complete"]
    assert_nothing_survives(run)


def test_history_write_from_a_signal_handler_that_interrupts_a_write(tmp_path, monkeypatch):
    """The GPT-3 trainer's SIGTERM handler writes history; the signal may arrive while the rank is inside a
    write. Made deterministic: the signal is raised from within the writer's own os.write call."""
    path = tmp_path / "rank-0.jsonl"
    writer = HistoryWriter(path, rank=0)
    real_write = os.write
    raised = []

    def write_interrupted_by_a_signal(fd, data):
        if not raised:
            raised.append(True)
            signal.raise_signal(signal.SIGUSR1)  # the Python handler runs here, inside the outer write
        return real_write(fd, data)

    def on_signal(signum, frame):
        writer.write("signal_received", signal="SIGUSR1")

    def on_alarm(signum, frame):
        raise TimeoutError("the write from the signal handler deadlocked")

    previous = {signal.SIGUSR1: signal.signal(signal.SIGUSR1, on_signal),
                signal.SIGALRM: signal.signal(signal.SIGALRM, on_alarm)}
    signal.setitimer(signal.ITIMER_REAL, 5.0)  # a deadlock fails the test instead of hanging it
    try:
        with monkeypatch.context() as patch:
            patch.setattr(os, "write", write_interrupted_by_a_signal)  # what chaos.history calls
            writer.write("point", step=1, phase="forward")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    writer.close()
    assert raised, "the signal was not raised inside the writer's write"
    assert [r["event"] for r in read_jsonl(path)] == ["signal_received", "point"]
    assert len(path.read_text().splitlines()) == 2, "a torn or interleaved line"


SUPERVISE_IN_CHILD = """
import sys, json
sys.path.insert(0, {tests!r})
from pathlib import Path
from test_supervisor import make_config
from chaos.plan import RestartPolicy
from chaos.supervisor import supervise
config = make_config(Path({run!r}), restart=RestartPolicy(max_restarts=3, teardown_grace_s=0.5, hang_timeout_s=30,
                     startup_timeout_s=60), train_iters=10000, step_time_s=0.02)
print(json.dumps(supervise(config).outcome), flush=True)
"""


def test_sigterm_to_the_supervisor_interrupts_and_leaves_nothing(tmp_path):
    run = tmp_path / "run"
    script = SUPERVISE_IN_CHILD.format(tests=str(REPO / "tests"), run=str(run))
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30

        def training() -> bool:  # both ranks have finished a step: the interrupt lands mid-training
            history = load_run_history(run)
            return bool(history.attempts) and all(
                any(r["event"] == "step_end" for r in history.attempts[0].ranks.get(rank, [])) for rank in (0, 1))

        while not training() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert training(), "the ranks never trained a step"
        child.send_signal(signal.SIGTERM)
        out, _ = child.communicate(timeout=20)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0
    assert json.loads(out.strip().splitlines()[-1]) == "interrupted"
    assert events(run, "run_end")[0]["outcome"] == "interrupted"
    assert [e["outcome"] for e in events(run, "attempt_end")] == ["interrupted"]
    for pid in all_pids(run):
        assert gone(pid)


def test_pid_reuse_guard_refuses_a_different_create_time():
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        real = psutil.Process(sleeper.pid).create_time()
        assert is_same_process(sleeper.pid, real)
        assert not is_same_process(sleeper.pid, real - 5.0)
        assert TrackedProcess.adopt(sleeper.pid, real - 5.0, role="rank") is None
        impostor = TrackedProcess(pid=sleeper.pid, create_time=real - 5.0, role="rank")  # no pidfd: guard only
        assert impostor.send("SIGKILL") is False
        assert sleeper.poll() is None, "the guard let a signal through to a process we did not record"
        genuine = TrackedProcess.adopt(sleeper.pid, real, role="rank")
        assert genuine is not None and genuine.send("SIGKILL")
        sleeper.wait(timeout=5)
        genuine.close()
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait()


def test_a_launch_that_fails_partway_leaves_no_process(tmp_path, monkeypatch):
    from chaos.errors import InfrastructureError
    from chaos.supervisor import launcher

    spawned: list[subprocess.Popen] = []
    real_spawn = launcher._spawn

    def spawn_once_then_fail(argv, env, log_path, *rest):
        if spawned:
            raise InfrastructureError("cannot launch the second rank (test)")
        spawned.append(real_spawn(argv, env, log_path, *rest))
        return spawned[-1]

    monkeypatch.setattr(launcher, "_spawn", spawn_once_then_fail)
    spec = LaunchSpec(argv=(sys.executable, "-c", "import time; time.sleep(60)"), world_size=2, nodes=2,
                      checkpoint_dir=tmp_path / "checkpoints", train_iters=1, save_interval=1)
    plan = launcher.AttemptLaunch(1, tmp_path, port=0, control_socket=str(tmp_path / "control.sock"))
    with pytest.raises(InfrastructureError, match="second rank"):
        launcher.launch_direct(spec, plan)
    [first] = spawned
    assert first.returncode == -signal.SIGKILL, "the rank started before the failure was not killed and reaped"


def test_long_run_dir_keeps_the_socket_inside_it(tmp_path):
    run = tmp_path / ("x" * 60) / ("y" * 60)
    outcome = supervise(make_config(run, train_iters=3))
    assert outcome.outcome == "complete"
    [start] = events(run, "attempt_start")
    assert start["control_socket"].startswith("/proc/") and len(start["control_socket"]) < 100


def test_torchrun_node_kill_takes_the_agent_and_its_rank(tmp_path):
    pytest.importorskip("torch")
    temp_before = set(Path(tempfile.gettempdir()).glob("torchelastic_*"))
    run = tmp_path / "run"
    faults = [fault(kind="node", node=1, ranks=(1,), step=4, phase="forward")]
    outcome = supervise(make_config(run, faults, launcher="torchrun", world_size=2, nodes=2,
                                    restart=RestartPolicy(max_restarts=1, teardown_grace_s=0.5, hang_timeout_s=10,
                                                          startup_timeout_s=90)))
    assert (outcome.outcome, outcome.attempts) == ("complete", 2)
    [landed] = outcome.landed
    assert (landed["rank"], landed["node"], landed["step"], landed["phase"]) == (1, 1, 4, "forward")
    [start] = [e for e in events(run, "attempt_start") if e["attempt"] == 1]
    agents = {p["node"]: p["pid"] for p in start["processes"]}
    assert [p["role"] for p in start["processes"]] == ["agent", "agent"]
    hellos = {r["rank"]: r for r in events(run, "rank_hello") if r["attempt"] == 1}
    assert {r: h["node"] for r, h in hellos.items()} == {0: 0, 1: 1}
    [teardown] = [e for e in events(run, "teardown") if e["attempt"] == 1]
    assert agents[1] not in teardown["sigkill"] and hellos[1]["pid"] not in teardown["sigkill"]
    assert agents[0] in teardown["sigterm"], "the surviving node is torn down by the supervisor"
    agent_exits = {e["node"]: e for e in events(run, "agent_exit") if e["attempt"] == 1}
    assert agent_exits[1]["returncode"] == -signal.SIGKILL
    assert (run / "attempts" / "01" / "agent-0.out").exists()
    # the agents log into the run directory (--log-dir), so even the killed one leaves nothing in /tmp
    assert set(Path(tempfile.gettempdir()).glob("torchelastic_*")) == temp_before
    assert_nothing_survives(run)
