"""Nothing outlives a killed supervisor: SIGKILL it at several points of a real run (the fake trainer, whose
ranks also spawn a child each) and, 2 s later, no process of that run is alive and its run directory has
stopped changing; with the attempt's cgroup, and with the process-group fallback where cgroups are not
available."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from chaos.history import read_jsonl, supervisor_history_path

REPO = Path(__file__).resolve().parents[1]

SUPERVISE = """
import sys
sys.path.insert(0, {tests!r})
from pathlib import Path
from test_supervisor import fault, make_config
from chaos.plan import RestartPolicy
from chaos.ownership import lifeline
from chaos.supervisor import supervise
if {no_cgroup!r}:
    lifeline.create_attempt_cgroup = lambda token, attempt: (None, "cgroups switched off by the test")
faults = [fault(ranks=(0, 1), step=3, phase="forward", signal_name="SIGKILL")] if {held!r} else [
    fault(ranks=(1,), step=3, phase="backward", signal_name="SIGKILL")]
config = make_config(Path({run!r}), faults=faults, world_size=2,
                     restart=RestartPolicy(max_restarts=3, teardown_grace_s={grace!r}, hang_timeout_s=60,
                                           startup_timeout_s=60),
                     train_iters=100000, save_interval=3, step_time_s=0.02, spawn_child=True,
                     delays=[{{"rank": 1, "step": 3, "attempt": 1, "seconds": 30}}] if {held!r} else [])
supervise(config)
"""


def supervisor_events(run: Path, name: str) -> list[dict]:
    return [r for r in read_jsonl(supervisor_history_path(run)) if r["event"] == name]


def rank_events(run: Path, name: str) -> list[dict]:
    return [r for path in sorted(run.glob("attempts/*/rank-*.jsonl")) for r in read_jsonl(path) if r["event"] == name]


def processes_of(run: Path) -> list[int]:
    """Every live process launched for this run: its command line or its environment names the run directory
    (the ranks' children inherit CHAOS_HISTORY_DIR)."""
    found = []
    for process in psutil.process_iter(["pid", "cmdline", "status"]):
        if process.info["pid"] == os.getpid() or process.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            text = " ".join(process.info["cmdline"] or []) + " " + json.dumps(process.environ())
        except psutil.Error:
            continue
        if str(run) in text:
            found.append(process.info["pid"])
    return found


def snapshot(run: Path) -> dict[str, int]:
    return {str(p.relative_to(run)): p.stat().st_size for p in run.rglob("*") if p.is_file()}


def wait_for(condition, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("the run never reached the point where the supervisor is killed")
        time.sleep(0.02)


POINTS = {
    # name: (when to kill, held fault, teardown grace)
    "at_launch": (lambda run: bool(supervisor_events(run, "attempt_start")), False, 0.5),
    "mid_step": (lambda run: len(rank_events(run, "step_end")) >= 4, False, 0.5),
    "while_held": (lambda run: bool(rank_events(run, "held")), True, 0.5),
    "during_teardown": (lambda run: bool(supervisor_events(run, "death_detected")), False, 5.0),
}


@pytest.mark.parametrize("cgroups", [True, False], ids=["cgroup", "process_groups"])
@pytest.mark.parametrize("point", list(POINTS))
def test_sigkill_of_the_supervisor_leaves_no_process_and_no_late_write(tmp_path, point, cgroups):
    when, held, grace = POINTS[point]
    run = tmp_path / "run"
    script = SUPERVISE.format(tests=str(REPO / "tests"), run=str(run), held=held, grace=grace, no_cgroup=not cgroups)
    supervisor = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: when(run) or supervisor.poll() is not None)
        assert supervisor.poll() is None, supervisor.stderr.read().decode() if supervisor.stderr else ""
        if point == "during_teardown":
            assert not supervisor_events(run, "teardown")  # inside the grace period: survivors still there
        launched = processes_of(run)
        assert launched, "the run's processes were not found before the kill"
        supervisor.send_signal(signal.SIGKILL)
        supervisor.wait(timeout=10)
        time.sleep(2.0)
        assert processes_of(run) == [], f"alive 2 s after the supervisor was killed at {point}"
        before = snapshot(run)
        time.sleep(0.5)
        assert snapshot(run) == before, "something still writes into the dead run's directory"
        lifeline = supervisor_events(run, "lifeline")
        assert lifeline and (lifeline[0]["cgroup"] is not None) == cgroups, lifeline
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
        for pid in processes_of(run):  # never leave a failing test's processes behind
            os.kill(pid, signal.SIGKILL)


def test_a_grandchild_that_left_the_process_tree_is_killed_at_teardown(tmp_path):
    """A daemon (double fork + setsid) escapes the process tree and every process group: only the attempt's
    cgroup still holds it, and teardown's cgroup.kill ends it (recorded as cgroup_killed)."""
    from chaos.plan import RestartPolicy
    from chaos.supervisor import SupervisorConfig, supervise
    from chaos.workloads.base import LaunchSpec

    run = tmp_path / "run"
    run.mkdir()
    daemon = ("import os, sys, time\n"
              "if os.fork() == 0:\n"
              "    os.setsid()\n"
              "    if os.fork() == 0:\n"
              "        open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(600)\n"
              "    os._exit(0)\n"
              "time.sleep(0.5)\n")
    spec = LaunchSpec(argv=(sys.executable, "-c", daemon, str(run / "daemon.pid")), world_size=1, nodes=1,
                      checkpoint_dir=run / "checkpoints", train_iters=1, save_interval=1)
    supervise(SupervisorConfig(launch=spec, faults=(), restart=RestartPolicy(max_restarts=0, startup_timeout_s=1.0),
                               launcher="direct", run_dir=run))
    [lifeline] = supervisor_events(run, "lifeline")
    if lifeline["cgroup"] is None:
        pytest.skip(f"no cgroup on this machine: {lifeline['reason']}")
    pid = int((run / "daemon.pid").read_text())
    [teardown] = supervisor_events(run, "teardown")
    assert pid in teardown["cgroup_killed"] and teardown["survivors"] == []
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
