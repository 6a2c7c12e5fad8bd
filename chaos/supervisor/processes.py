"""The processes of one attempt: who they are, how to signal them safely, and how to make sure they are gone.

Safety first: the supervisor must never signal a process it did not start. Every process it may signal is
known by (pid, create_time) and, once verified, by a pidfd. Signals go through the pidfd
(`pidfd_send_signal`), which names that process and no other even if its pid is reused; a process known
only by pid is signalled only after psutil confirms the pid still has the recorded create_time.
Process-group signals (`killpg`) are sent only while the group leader is alive or an unreaped zombie
(our own children are reaped only after teardown, see `exit_status`), so the group id cannot be reused.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

#: Signals whose default action ends the process: after delivering one the supervisor waits for the death
#: instead of releasing the held rank.
FATAL_BY_DEFAULT = frozenset({"SIGKILL", "SIGSEGV", "SIGABRT"})
STATUS_FILE_WAIT_S = 2.0
"""How long a reaping parent may take to write down how its child ended (it does so at once)."""


def create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def is_same_process(pid: int, expected_create_time: float) -> bool:
    """The PID-reuse guard: the pid still names the process we recorded (psutil's create_time is exact to
    the clock tick of the same boot, so equality is the test)."""
    current = create_time(pid)
    return current is not None and current == expected_create_time


@dataclass
class TrackedProcess:
    """A process of the attempt. `popen` is set for our own children (agents, direct ranks)."""

    pid: int
    create_time: float
    role: str                       # "rank" | "agent"
    rank: int | None = None
    node: int | None = None
    popen: subprocess.Popen | None = None
    pidfd: int | None = None
    exited: bool = False
    exit_mono: float | None = None
    last_signal: str | None = None
    last_signal_mono: float | None = None
    warm: bool = False
    """Started from a warm spare (chaos.supervisor.spares) rather than a fresh interpreter."""
    status_file: Path | None = None
    """Where the process's parent writes how it ended (a Slurm task's shim, chaos.supervisor.slurm_task):
    read when the exit code could not be (its parent reaped it before we looked)."""
    status_writer: tuple[int, float] | None = None
    """(pid, create_time) of that parent: while it lives, the file is coming."""

    def expect_status_file(self, path: Path) -> None:
        """The parent (now) writes how this process ended to `path`."""
        self.status_file = path
        try:
            parent = psutil.Process(self.pid).parent()
            self.status_writer = (parent.pid, parent.create_time()) if parent is not None else None
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            self.status_writer = None

    @classmethod
    def from_popen(cls, popen: subprocess.Popen, role: str, rank: int | None = None,
                   node: int | None = None) -> "TrackedProcess":
        # pidfd_open on our own unreaped child cannot race with pid reuse.
        pidfd = os.pidfd_open(popen.pid)
        started = create_time(popen.pid)
        return cls(pid=popen.pid, create_time=started if started is not None else 0.0, role=role, rank=rank,
                   node=node, popen=popen, pidfd=pidfd)

    @classmethod
    def adopt(cls, pid: int, expected_create_time: float, role: str, rank: int | None = None,
              node: int | None = None) -> "TrackedProcess | None":
        """Tracks a process we did not spawn directly (a torchrun worker). The pidfd is opened first and the
        identity checked after, so the pidfd provably refers to the verified process."""
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return None
        if not is_same_process(pid, expected_create_time):
            os.close(pidfd)
            return None
        return cls(pid=pid, create_time=expected_create_time, role=role, rank=rank, node=node, pidfd=pidfd)

    # ---- state --------------------------------------------------------------------------------------
    def alive(self) -> bool:
        if self.exited:
            return False
        if self.pidfd is not None:
            readable, _, _ = select.select([self.pidfd], [], [], 0)
            return not readable
        return is_same_process(self.pid, self.create_time)

    def exit_status(self) -> tuple[int | None, str | None]:
        """(returncode, signal name) of a process that has exited, without reaping our child (WNOWAIT keeps
        the zombie, so its pid and process group stay ours until `reap`). For a process that is not our
        child (a torchrun worker) the exit code is read from /proc/<pid>/stat while it is still a zombie;
        None when its parent already reaped it."""
        if self.popen is not None and self.pidfd is not None:
            try:
                result = os.waitid(os.P_PIDFD, self.pidfd, os.WEXITED | os.WNOWAIT)
            except ChildProcessError:
                result = None
            if result is not None:
                if result.si_code == os.CLD_EXITED:
                    return result.si_status, None
                return -result.si_status, _signal_name(result.si_status)
            code = self.popen.poll()
            return code, returncode_signal(code)
        wait_status = _zombie_wait_status(self.pid)
        if wait_status is None:
            return self._recorded_status()
        if os.WIFSIGNALED(wait_status):
            signum = os.WTERMSIG(wait_status)
            return -signum, _signal_name(signum)
        return os.WEXITSTATUS(wait_status), None

    def _recorded_status(self, wait_s: float = STATUS_FILE_WAIT_S) -> tuple[int | None, str | None]:
        """(returncode, signal) from `status_file`, once its writer (the reaping parent) has written it; it
        is waited for only while the writer lives (a shim killed with its rank writes nothing)."""
        if self.status_file is None:
            return None, None
        deadline = time.monotonic() + wait_s
        while True:
            writer_alive = self.status_writer is not None and _alive_not_zombie(*self.status_writer)
            try:
                ended = json.loads(self.status_file.read_text())
                return (ended.get("returncode"), ended.get("signal")) if ended.get("pid") == self.pid else (None, None)
            except (OSError, ValueError):
                if not writer_alive or time.monotonic() >= deadline:
                    return None, None
                time.sleep(0.01)

    def mark_exited(self, now: float) -> None:
        if not self.exited:
            self.exited = True
            self.exit_mono = now

    # ---- signals ------------------------------------------------------------------------------------
    def send(self, signal_name: str) -> bool:
        """Delivers a signal to this process only. False when it is gone (or no longer the process we
        recorded): nothing was signalled."""
        signum = signal.Signals[signal_name]
        try:
            if self.pidfd is not None:
                signal.pidfd_send_signal(self.pidfd, signum)
            elif is_same_process(self.pid, self.create_time):
                os.kill(self.pid, signum)
            else:
                return False
        except ProcessLookupError:
            return False
        self.last_signal = signal_name
        self.last_signal_mono = time.monotonic()
        return True

    def send_group(self, signal_name: str) -> bool:
        """Signals the process group this process leads (it was started in a new session), so its children
        get it too. Only while the leader is alive or our unreaped zombie, so the group id is still ours."""
        signum = signal.Signals[signal_name]
        if not self.alive() and not (self.popen is not None and self.popen.returncode is None):
            return False
        try:
            os.killpg(self.pid, signum)
        except ProcessLookupError:
            # No group led by this pid (it did not start a session): the process alone.
            return self.send(signal_name) if self.alive() else False
        if self.alive():
            self.last_signal = signal_name
            self.last_signal_mono = time.monotonic()
        return True

    def reap(self) -> None:
        if self.popen is not None:
            try:
                self.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self.close()

    def close(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


def _signal_name(signum: int | None) -> str | None:
    if signum is None:
        return None
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


def returncode_signal(returncode: int | None) -> str | None:
    """The signal that ended a process, from a Popen-style returncode (-N: killed by signal N)."""
    return _signal_name(-returncode) if returncode is not None and returncode < 0 else None


def _zombie_wait_status(pid: int) -> int | None:
    """Field 52 of /proc/<pid>/stat (`exit_code`, Linux >= 3.5) is the waitpid status of a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            text = handle.read()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2:].split()
    if not fields or fields[0] != "Z" or len(fields) < 50:
        return None
    return int(fields[49])


@dataclass
class ProcessTable:
    """Every process of one attempt: the ones we launched, the ranks we verified, and every descendant we
    have seen (recorded by (pid, create_time) so that teardown can verify them even once orphaned)."""

    launched: list[TrackedProcess] = field(default_factory=list)
    ranks: dict[int, TrackedProcess] = field(default_factory=dict)
    descendants: dict[int, float] = field(default_factory=dict)

    def all_tracked(self) -> list[TrackedProcess]:
        seen, result = set(), []
        for process in [*self.launched, *self.ranks.values()]:
            if id(process) not in seen:
                seen.add(id(process))
                result.append(process)
        return result

    def record_descendants(self) -> None:
        """Records every live descendant of our live processes. One pass over /proc builds the parent map
        (psutil's children(recursive=True) would rebuild it for every tracked process)."""
        children: dict[int, list[psutil.Process]] = {}
        for process in psutil.process_iter(["ppid"]):
            children.setdefault(process.info["ppid"], []).append(process)
        # Walk only from roots that are still the process we recorded (a reused pid is not ours); like
        # psutil, a "descendant" older than its root is a pid reused while the map was built, and skipped.
        stack = [(p.pid, p.create_time) for p in self.all_tracked()
                 if not p.exited and is_same_process(p.pid, p.create_time)]
        seen = {pid for pid, _ in stack}
        while stack:
            parent, root_started = stack.pop()
            for child in children.get(parent, ()):
                if child.pid in seen:
                    continue
                seen.add(child.pid)
                try:
                    started = child.create_time()
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
                if started >= root_started:
                    self.descendants.setdefault(child.pid, started)
                    stack.append((child.pid, root_started))

    def record_group_members(self) -> None:
        """Records every process still in the process group of one of ours: children of a rank that died
        (SIGKILL) are orphaned out of its descendants but stay in its group. A member must be younger than
        the leader we recorded, and is never the group id itself, so a reused pid cannot sneak in."""
        leaders = {p.pid: p.create_time for p in self.all_tracked()}
        for pid in psutil.pids():
            try:
                group = os.getpgid(pid)
            except OSError:
                continue
            if group in leaders and pid != group:
                started = create_time(pid)
                if started is not None and started >= leaders[group]:
                    self.descendants.setdefault(pid, started)

    def adopt_slurm_task(self, process: TrackedProcess, status_file: Path) -> None:
        """A rank that is a Slurm task's child (chaos.supervisor.slurm_task): its shim reaps it and writes
        how it ended to `status_file`; the shim is the run's too, so teardown ends it with its rank."""
        process.expect_status_file(status_file)
        if process.status_writer is not None:
            self.descendants.setdefault(*process.status_writer)

    def launched_ancestor(self, pid: int) -> TrackedProcess | None:
        """The launched process (agent or direct rank) that `pid` is, or descends from; None if none is."""
        by_pid = {p.pid: p for p in self.launched}
        try:
            process = psutil.Process(pid)
            chain = [process, *process.parents()]
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            return None
        for candidate in chain:
            tracked = by_pid.get(candidate.pid)
            if tracked is not None and candidate.create_time() == tracked.create_time:
                return tracked
        return None


def still_running(pid: int) -> bool:
    """Alive and not a zombie (a zombie holds nothing but its exit status)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _live_untracked(table: ProcessTable) -> list[tuple[int, float]]:
    tracked = {p.pid for p in table.all_tracked()}
    return [(pid, started) for pid, started in table.descendants.items()
            if pid not in tracked and _alive_not_zombie(pid, started)]


def _alive_not_zombie(pid: int, started: float) -> bool:
    try:
        process = psutil.Process(pid)
        return process.create_time() == started and process.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def _signal_untracked(pid: int, started: float, signal_name: str) -> bool:
    if not is_same_process(pid, started):
        return False
    try:
        os.kill(pid, signal.Signals[signal_name])
        return True
    except ProcessLookupError:
        return False


@dataclass
class TeardownResult:
    duration_s: float
    sigterm: list[int]
    sigkill: list[int]
    survivors: list[int]


def teardown(table: ProcessTable, grace_s: float, poll_s: float = 0.01) -> TeardownResult:
    """SIGKILL at once to every stopped process (a SIGSTOPped rank stands for a frozen one: woken with SIGTERM
    pending it would finish its step and save gracefully, writing a checkpoint during the teardown of a
    hang); SIGTERM to every other survivor and its process group; after `grace_s`, SIGKILL to whatever
    remains; then verify that nothing of the attempt is left. No SIGCONT is ever sent."""
    started = time.monotonic()
    table.record_descendants()
    table.record_group_members()
    sigterm: list[int] = []
    sigkill: list[int] = []
    for process in table.all_tracked():
        if process.alive() and _stopped(process.pid):
            process.send_group("SIGKILL")
            sigkill.append(process.pid)
    for process in table.all_tracked():
        if process.alive() and process.pid not in sigkill:
            process.send_group("SIGTERM")
            sigterm.append(process.pid)
    for pid, created in _live_untracked(table):
        name = "SIGKILL" if _stopped(pid) else "SIGTERM"
        if _signal_untracked(pid, created, name):
            (sigkill if name == "SIGKILL" else sigterm).append(pid)

    _wait_until_gone(table, started + grace_s, poll_s * 5)
    table.record_descendants()
    table.record_group_members()
    for process in table.all_tracked():
        if process.alive():
            process.send_group("SIGKILL")
            if process.pid not in sigkill:
                sigkill.append(process.pid)
    for pid, created in _live_untracked(table):
        if _signal_untracked(pid, created, "SIGKILL"):
            sigkill.append(pid)
    _wait_until_gone(table, time.monotonic() + 2.0, poll_s)
    for process in table.all_tracked():
        if not process.exited and not process.alive():
            process.mark_exited(time.monotonic())
        process.reap()
    survivors = [p.pid for p in table.all_tracked() if p.popen is None and p.alive()]
    survivors += [p.pid for p in table.all_tracked() if p.popen is not None and p.popen.returncode is None]
    survivors += [pid for pid, _ in _live_untracked(table)]
    return TeardownResult(duration_s=time.monotonic() - started, sigterm=sigterm, sigkill=sigkill,
                          survivors=sorted(set(survivors)))


def _stopped(pid: int) -> bool:
    """In job-control stop (SIGSTOP/SIGTSTP): state T in /proc/<pid>/stat."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] in (b"T", b"t")
    except (OSError, IndexError):
        return False


def _wait_until_gone(table: ProcessTable, deadline: float, poll_s: float) -> None:
    """Waits until nothing of the attempt is alive or the deadline passes. While only tracked processes
    live, it sleeps on their pidfds (readable at exit); an untracked one has no pidfd, so it polls."""
    while time.monotonic() < deadline:
        untracked = _live_untracked(table)  # scans psutil: once per round
        if not untracked and not any(p.alive() for p in table.all_tracked()):
            return
        timeout_s = min(poll_s, max(0.0, deadline - time.monotonic()))
        fds = [p.pidfd for p in table.all_tracked() if p.pidfd is not None and not p.exited]
        if fds and not untracked:
            ready, _, _ = select.select(fds, [], [], timeout_s)
            for process in table.all_tracked():
                if process.pidfd in ready:
                    process.mark_exited(time.monotonic())
        else:
            time.sleep(timeout_s)


# ---- the run-token sweep --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Leaked:
    pid: int
    command: str
    alive_after_sigkill: bool


def environ_has(pid: int, *env_lines: str) -> bool:
    """Whether process `pid`'s environment holds every NAME=value line (False when it cannot be read)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            entries = set(handle.read().split(b"\0"))
    except OSError:
        return False
    return all(line.encode() in entries for line in env_lines)


def _net_namespace(pid: int | str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None


def same_host(pid: int) -> bool:
    """`pid` is in this process's network namespace: on this host (simulated hosts share one process table)."""
    own = _net_namespace("self")
    return own is not None and _net_namespace(pid) == own


def sweep_token_holders(env_line: str, exclude: set[int], timeout_s: float = 2.0,
                        same_host_only: bool = False) -> list[Leaked]:
    """Finds and SIGKILLs every live process whose environment carries `env_line` (the run's token,
    `CHAOS_RUN_TOKEN=...`): only the run's own processes and what they started carry it, so these are ours
    to kill. Run after teardown, it is the witness independent of how teardown found processes (tree,
    groups, cgroup): whatever escaped all three (a helper that double-forked, setsid()ed and left the cgroup)
    still carries the token. `exclude`: the supervisor's own token holders that are not the attempt's (warm
    spares waiting in the pool). A process that exec()s with an emptied environment escapes this too.
    `same_host_only`: an agent's sweep, only processes in its own network namespace (its host: simulated
    hosts share one process table, and another host's processes are its agent's)."""
    found: list[tuple[int, float, str]] = []
    for pid in (int(name) for name in os.listdir("/proc") if name.isdigit()):
        if pid in exclude or pid == os.getpid():
            continue
        if same_host_only and not same_host(pid):
            continue
        if not environ_has(pid, env_line):
            continue
        try:
            process = psutil.Process(pid)
            if process.status() != psutil.STATUS_ZOMBIE:
                found.append((pid, process.create_time(), " ".join(process.cmdline())[:200]))
        except (OSError, psutil.Error):  # gone, or another user's
            continue
    for pid, started, _ in found:
        _signal_untracked(pid, started, "SIGKILL")
    deadline = time.monotonic() + timeout_s
    while any(_alive_not_zombie(pid, started) for pid, started, _ in found) and time.monotonic() < deadline:
        time.sleep(0.01)
    return [Leaked(pid, command, _alive_not_zombie(pid, started)) for pid, started, command in found]
