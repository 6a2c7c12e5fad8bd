"""Issue 20, findings 4 and 5: the run-token sweep signals only the run's processes (another user's process
that copied the token is reported, never killed, never the job's fault), text from /proc is escaped before it
reaches history, evidence or a terminal, and teardown never signals a process that merely got a recorded pid.

Real processes (sleepers), no training run: the sweep and teardown are called as the supervisor calls them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET

import psutil
import pytest

from chaos import history as h
from chaos.checkers import run_check
from chaos.report.junit import build_junit
from chaos.report.model import build_report
from chaos.report.summary import format_summary
from chaos.ownership.processes import ProcessTable, TrackedProcess, create_time, teardown
from chaos.ownership.sweep import sweep_token_holders
from synthetic_runs import SyntheticRun

NOBODY = 65534
HOSTILE_ARGV = "\x1b[2J\x1b[H\x1b[32mchaos: PASS\x1b[0m\nforged line"
"""What finding 4's stranger put in its argv: clear the screen, draw a green verdict, start a new line."""
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: chaos's situation (it signals other users' "
                                                         "processes only as root), and setuid/ns_last_pid")


@pytest.fixture
def token() -> str:
    return f"CHAOS_RUN_TOKEN=test-{uuid.uuid4().hex}"


@pytest.fixture
def processes():
    """Every process a test starts, killed and reaped afterwards whatever happened."""
    started: list[subprocess.Popen | int] = []
    yield started
    for item in started:
        pid = item.pid if isinstance(item, subprocess.Popen) else item
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if isinstance(item, subprocess.Popen):
            item.wait()


def _with_token(token: str) -> dict[str, str]:
    name, value = token.split("=", 1)
    return {**os.environ, name: value}


def _become_nobody() -> None:
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _escaped(text: str) -> bool:
    return "\x1b" not in text and "\n" not in text and "\\x1b" in text


# ---- finding 4: the sweep ------------------------------------------------------------------------------
@root_only
def test_another_users_process_carrying_the_token_is_not_killed_and_is_reported(token, processes):
    stranger = subprocess.Popen([HOSTILE_ARGV, "60"], executable="/bin/sleep", env=_with_token(token),
                                preexec_fn=_become_nobody)
    processes.append(stranger)
    time.sleep(0.2)  # exec'd, environment in place
    swept = sweep_token_holders(token, exclude=set())
    assert stranger.poll() is None, "root chaos killed another user's process"
    assert stranger.pid not in [item.pid for item in swept], "another user's process blamed on the job"
    found = [item for item in swept.strangers if item.pid == stranger.pid]
    assert len(found) == 1 and found[0].uid == NOBODY, swept.strangers
    assert _escaped(found[0].command), found[0].command
    assert "uid 65534" in found[0].why and "not signalled" in found[0].why


def test_a_same_user_process_tied_to_the_run_by_the_token_only_is_killed_and_says_so(token, processes):
    """The decision (see sweep_token_holders): a process of the run's own user that carries the token but
    was neither recorded nor descends from the run (here an orphan re-parented away, as a job's daemonising
    helper or a lost agent's leftover is) is killed and blamed on the job, saying that only the token tied
    it to the run: it cannot be told from the job's own escapee, and that user could signal the ranks and
    write the run's files anyway."""
    shell = subprocess.run(["/bin/sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $!"], env=_with_token(token),
                           capture_output=True, text=True, check=True)
    orphan = int(shell.stdout)
    processes.append(orphan)
    swept = sweep_token_holders(token, exclude=set(), table=ProcessTable())
    assert [(item.pid, item.tied_by, item.alive_after_sigkill) for item in swept] == [(orphan, "token", False)]
    assert not _running(orphan) and swept.strangers == []


def test_a_leaked_process_of_the_run_is_still_killed_with_its_argv_escaped(token, processes, tmp_path):
    """A rank of ours starts a helper whose argv holds escape sequences; teardown's scan had recorded it.
    The sweep kills both (the run's user, recorded) and the command it reports is escaped."""
    pid_file = tmp_path / "helper.pid"
    script = ("import subprocess, sys, time; helper = subprocess.Popen([sys.executable, '-c', "
              "'import time; time.sleep(60)', sys.argv[2]]); open(sys.argv[1], 'w').write(str(helper.pid)); "
              "time.sleep(60)")
    rank = subprocess.Popen([sys.executable, "-c", script, str(pid_file), HOSTILE_ARGV], env=_with_token(token),
                            start_new_session=True)
    processes.append(rank)
    deadline = time.monotonic() + 10
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.01)
    helper = int(pid_file.read_text())
    processes.append(helper)
    time.sleep(0.2)
    table = ProcessTable(launched=[TrackedProcess.from_popen(rank, role="rank", rank=0)])
    table.record_descendants()
    assert helper in table.descendants
    swept = sweep_token_holders(token, exclude=set(), table=table)
    by_pid = {item.pid: item for item in swept}
    assert set(by_pid) == {rank.pid, helper} and swept.strangers == []
    assert by_pid[helper].tied_by == "recorded" and not by_pid[helper].alive_after_sigkill
    assert _escaped(by_pid[helper].command) and "forged line" in by_pid[helper].command, by_pid[helper].command
    assert rank.wait(timeout=5) == -signal.SIGKILL and not _running(helper)
    for process in table.all_tracked():
        process.close()
    table.close_descendants()


def test_no_survivors_passes_with_a_stranger_and_says_it_was_seen(tmp_path):
    run = SyntheticRun(tmp_path)
    run.attempt(1, resume_from=0, last_step=12, end="complete")
    run.sup(h.SECURITY_EVENT, attempt=1, pid=4321, uid=NOBODY, command="sleep 60", why="runs as uid 65534")
    run.finish()
    result = run_check(run.context(), "no_survivors")
    assert result.status == "pass", result.detail
    assert "1 process(es) of other users" in result.detail
    assert result.evidence["strangers_not_the_jobs"][0]["pid"] == 4321
    assert all(4321 not in (t.get("survivors") or []) for t in result.evidence["teardowns"])


def test_argv_from_history_reaches_the_no_survivors_detail_escaped(tmp_path):
    """A leaked process's command in the history (written by an older chaos, or copied from elsewhere) is
    escaped in the check's detail, which the summary and junit.xml show."""
    run = SyntheticRun(tmp_path)
    run.attempt(1, resume_from=0, last_step=12, end="complete")
    run.sup(h.TEARDOWN, attempt=1, duration_s=0.1, sigterm=[], sigkill=[], survivors=[],
            leaked=[{"pid": 99, "command": HOSTILE_ARGV}])
    run.finish()
    result = run_check(run.context(), "no_survivors")
    assert result.status == "fail" and _escaped(result.detail), result.detail


def test_a_security_event_is_in_report_json_the_summary_and_junit(tmp_path):
    run = SyntheticRun(tmp_path)
    run.attempt(1, resume_from=0, last_step=12, end="complete")
    run.sup(h.SECURITY_EVENT, attempt=1, pid=4321, uid=NOBODY, command=HOSTILE_ARGV, why="runs as uid 65534")
    run.finish()
    ctx = run.context()
    report = build_report(ctx, [run_check(ctx, "no_survivors")], "security", None)
    assert [event["pid"] for event in report["security_events"]] == [4321]
    assert _escaped(report["security_events"][0]["command"])
    summary = format_summary(report)
    line = next(line for line in summary.splitlines() if "SECURITY" in line)
    assert "pid 4321 uid 65534" in line and "\x1b" not in summary
    suite = ET.fromstring(ET.tostring(build_junit(report)))
    values = [p.get("value") for p in suite.iter("property") if p.get("name", "").startswith("security_event.")]
    assert len(values) == 1 and "4321" in values[0] and "\x1b" not in values[0]


# ---- finding 5: pid reuse ------------------------------------------------------------------------------
def _on_pid(pid: int, start) -> subprocess.Popen | None:
    """A new process started by `start()` that got `pid` (ns_last_pid = pid - 1 just before the fork; other
    processes may take it first, so a few tries)."""
    for _ in range(50):
        try:
            with open("/proc/sys/kernel/ns_last_pid", "w") as handle:
                handle.write(str(pid - 1))
        except OSError:
            return None
        process = start()
        if process.pid == pid:
            return process
        process.kill()
        process.wait()
    return None


STRANGER_SESSION = ("import os, sys, time\n"
                    "child = os.fork()\n"
                    "if child == 0:\n"
                    "    time.sleep(60)\n"
                    "    os._exit(0)\n"
                    "print(child, flush=True)\n"
                    "time.sleep(60)\n")
"""An unrelated session: its leader (started in a new session, so its group id is its pid) and a child."""


@root_only
def test_teardown_does_not_signal_the_group_of_a_stranger_that_got_an_exited_adopted_leaders_pid(processes):
    """An adopted rank (not our child: its parent reaps it) that led its own group exits; its pid goes to the
    leader of an unrelated session. Teardown must signal nothing of that session."""
    rank = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    processes.append(rank)
    time.sleep(0.1)
    adopted = TrackedProcess.adopt(rank.pid, create_time(rank.pid), role="rank", rank=0)
    assert adopted is not None
    table = ProcessTable(ranks={0: adopted})
    rank.kill()
    rank.wait()  # reaped by its parent: the pid is free
    leader = _on_pid(rank.pid, lambda: subprocess.Popen([sys.executable, "-c", STRANGER_SESSION],
                                                       stdout=subprocess.PIPE, text=True, start_new_session=True))
    if leader is None:
        pytest.skip(f"could not get pid {rank.pid} again through /proc/sys/kernel/ns_last_pid")
    processes.append(leader)
    child = int(leader.stdout.readline())
    processes.append(child)
    result = teardown(table, grace_s=0.5)
    assert _running(child) and leader.poll() is None, "teardown signalled an unrelated session"
    assert child not in result.sigterm + result.sigkill and child not in table.descendants


@root_only
def test_the_watchdog_leaves_a_group_whose_id_was_reused_by_a_stranger(processes):
    """The supervisor died; the watchdog kills what it guarded. The guarded group's leader and members are
    long gone and an unrelated session now leads a group with the same id: nothing of it is signalled."""
    from chaos.ownership import watchdog

    leader = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    processes.append(leader)
    time.sleep(0.1)
    guarded_pgid, guarded_created = leader.pid, create_time(leader.pid)
    leader.kill()
    leader.wait()
    time.sleep(0.05)  # a later creation tick for the stranger
    stranger = _on_pid(guarded_pgid, lambda: subprocess.Popen([sys.executable, "-c", STRANGER_SESSION],
                                                              stdout=subprocess.PIPE, text=True,
                                                              start_new_session=True))
    if stranger is None:
        pytest.skip(f"could not get pid {guarded_pgid} again through /proc/sys/kernel/ns_last_pid")
    processes.append(stranger)
    child = int(stranger.stdout.readline())
    processes.append(child)
    watchdog._kill_group(guarded_pgid, guarded_created)
    time.sleep(0.1)
    assert _running(child) and stranger.poll() is None, "the watchdog killed a session that reused the group id"


def test_the_watchdog_still_kills_the_members_of_its_group_after_the_leader_exited(processes):
    """The leader is gone but members of its group live on (the id cannot be reused while they do): killed."""
    from chaos.ownership import watchdog

    leader = subprocess.Popen([sys.executable, "-c", STRANGER_SESSION], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    processes.append(leader)
    member = int(leader.stdout.readline())
    processes.append(member)
    created = create_time(leader.pid)
    leader.kill()
    leader.wait()
    watchdog._kill_group(leader.pid, created)
    deadline = time.monotonic() + 5
    while _running(member) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _running(member)
