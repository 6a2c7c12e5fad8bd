"""The processes of one attempt: who they are, how to signal them safely, and how to make sure they are gone.

Safety first: the supervisor must never signal a process it did not start. Every process it may signal is
held by a pidfd, opened when the process was first recorded and kept from then on: `pidfd_open` first, the
identity (create_time, and the parent or group that made it ours) read after, and the pidfd kept only if the
process was still running once everything was read, so every read described the process the pidfd names.
Signals go through the pidfd (`pidfd_send_signal`), which names that process and no other: once it has
exited the signal fails (ESRCH) instead of reaching whoever got its pid. No bare pid from an earlier record is
ever signalled. Process-group signals (`killpg`) are sent only while the group leader holds its pid: our own
unreaped child (reaped only after teardown, see `exit_status`) or a process whose pidfd says it is running
at that instant; the kernel never reuses a pid while it is in use, so the group id is still the leader's.

What escaped all this is ended by the run-token sweep (chaos.ownership.sweep).
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

from chaos import safe_files


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
    start: str = "cold"
    """How it was started: "cold" (a fresh interpreter), "spare" (a warm spare, chaos.supervisor.spares.pool)
    or "fork" (forked from the run's zygote, chaos.supervisor.spares.fork_server)."""
    status_file: Path | None = None
    """Where the process's parent writes how it ended (a Slurm task's shim, chaos.supervisor.hosts.slurm_task):
    read when the exit code could not be (its parent reaped it before we looked)."""
    status_writer: tuple[int, float] | None = None
    """(pid, create_time) of that parent: while it lives, the file is coming."""
    fork_mono: float | None = None
    """start == "fork": when the zygote's fork returned (the restart breakdown's `fork` stage)."""
    warm_refusal: str | None = None
    """start == "cold" where it could have been warm: why it was not (the zygote refused, or died)."""

    @property
    def warm(self) -> bool:
        """Started without a new interpreter's imports (a spare or a fork)."""
        return self.start != "cold"

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

    def holds_pid(self) -> bool:
        """Whether `pid` still names this process now: our unreaped child (alive or a zombie only we reap),
        or a process whose pidfd says it is running. An adopted process that has exited has not: its
        parent reaps it, and its pid (and so its group id) may already be someone else's."""
        if self.popen is not None and self.popen.returncode is None:
            return True
        return self.pidfd is not None and not pidfd_exited(self.pidfd)

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
                ended = json.loads(safe_files.read_text(self.status_file, limit=4096))  # no link followed
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
            elif self.popen is not None and self.popen.returncode is None:
                os.kill(self.pid, signum)  # our unreaped child: its pid is still its own
            else:
                return False  # known only by a pid that may have been reused since
        except ProcessLookupError:
            return False
        self.last_signal = signal_name
        self.last_signal_mono = time.monotonic()
        return True

    def send_group(self, signal_name: str) -> bool:
        """Signals the process group this process leads (it was started in a new session), so its children
        get it too. Only while the leader holds its pid (`holds_pid`), so the group id is still its own.
        For our own child that is exact (its zombie keeps the pid until we reap it). For an adopted leader
        (a torchrun worker, a Slurm task: another process reaps it) the pidfd is asked right before
        `killpg`; what remains is the window between those two system calls, in which the leader would have
        to exit, be reaped, every member of its group end and its pid be handed to a new group leader."""
        signum = signal.Signals[signal_name]
        if not self.holds_pid():
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


def pidfd_exited(pidfd: int) -> bool:
    """The process a pidfd names has exited (a zombie included): the pidfd is readable."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(0))


def open_verified(pid: int, expected_create_time: float, still_ours=None) -> int | None:
    """A pidfd of `pid`, only if the process it names is the one recorded: opened first, then the pid's
    create_time (and `still_ours(pid)`, the parent or group that made it ours) read, then the pidfd asked
    whether that process is still running. If it is, every read described it (its pid was never free in
    between); otherwise None and nothing is kept."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return None
    if create_time(pid) == expected_create_time and (still_ours is None or still_ours(pid)) \
            and not pidfd_exited(pidfd):
        return pidfd
    os.close(pidfd)
    return None


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
    have seen (recorded by (pid, create_time) and held by a pidfd opened while it was verified ours, so that
    teardown can signal exactly it even once orphaned, and never whoever gets its pid afterwards)."""

    launched: list[TrackedProcess] = field(default_factory=list)
    ranks: dict[int, TrackedProcess] = field(default_factory=dict)
    descendants: dict[int, float] = field(default_factory=dict)
    pidfds: dict[int, int] = field(default_factory=dict)
    """pid -> pidfd of each recorded descendant still held (see `_record`)."""

    def all_tracked(self) -> list[TrackedProcess]:
        seen, result = set(), []
        for process in [*self.launched, *self.ranks.values()]:
            if id(process) not in seen:
                seen.add(id(process))
                result.append(process)
        return result

    def _record(self, pid: int, started: float, still_ours=None) -> bool:
        """Records `pid` as the run's, held by a pidfd (`open_verified`). A record of an earlier process
        that had this pid and has exited is replaced. True when it is recorded (now or before)."""
        held = self.pidfds.get(pid)
        if held is not None:
            if self.descendants.get(pid) == started and not pidfd_exited(held):
                return True
            os.close(self.pidfds.pop(pid))
        pidfd = open_verified(pid, started, still_ours)
        if pidfd is None:
            return False
        self.descendants[pid] = started
        self.pidfds[pid] = pidfd
        return True

    def forget_exited(self) -> None:
        """Lets go of the descendants that have exited (their pidfds would pile up over a long run)."""
        for pid, pidfd in list(self.pidfds.items()):
            if pidfd_exited(pidfd):
                os.close(self.pidfds.pop(pid))
                self.descendants.pop(pid, None)

    def close_descendants(self) -> None:
        """Closes every descendant's pidfd (after teardown); the (pid, create_time) records stay."""
        for pidfd in self.pidfds.values():
            os.close(pidfd)
        self.pidfds.clear()

    def _local(self) -> list[TrackedProcess]:
        """The tracked processes on this host (not a rank an agent owns on another: its pid is not ours)."""
        return [p for p in self.all_tracked() if isinstance(p, TrackedProcess)]

    def _local_holders(self) -> dict[int, TrackedProcess]:
        return {p.pid: p for p in self._local() if p.holds_pid()}

    def record_descendants(self) -> None:
        """Records every live descendant of our live processes. One pass over /proc builds the parent map
        (psutil's children(recursive=True) would rebuild it for every tracked process)."""
        self.forget_exited()
        children: dict[int, list[psutil.Process]] = {}
        for process in psutil.process_iter(["ppid"]):
            children.setdefault(process.info["ppid"], []).append(process)
        # Walk only from roots that hold their pid now (a reused pid is not ours); like psutil, a
        # "descendant" older than its root is a pid reused while the map was built, and skipped. Each child is
        # recorded only if, with its pidfd open, its parent is still the one we walked from.
        roots = self._local_holders()
        stack = [(p.pid, p.create_time) for p in roots.values() if not p.exited]
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
                if started >= root_started and self._record(
                        child.pid, started, lambda pid, parent=parent: _parent_pid(pid) == parent
                        and self._holds(parent)):
                    stack.append((child.pid, root_started))

    def _holds(self, pid: int) -> bool:
        """`pid` still names the tracked process or recorded descendant we know by it."""
        tracked = next((p for p in self._local() if p.pid == pid), None)
        if tracked is not None:
            return tracked.holds_pid()
        pidfd = self.pidfds.get(pid)
        return pidfd is not None and not pidfd_exited(pidfd)

    def record_group_members(self) -> None:
        """Records every process still in the process group of one of ours: children of a rank that died
        (SIGKILL) are orphaned out of its descendants but stay in its group. Only the groups of leaders that
        hold their pid now count (`TrackedProcess.holds_pid`): an adopted leader that has exited was reaped
        by its parent, and its pid, so its group id, may already be a stranger's. While the leader holds it,
        the group id can be no one else's (the kernel reuses no pid in use), and no process outside its
        session can join it. Each member is recorded with a pidfd opened while its group and its leader
        were checked again, so a reused pid cannot sneak in, neither the leader's nor a member's."""
        leaders = self._local_holders()
        for pid in psutil.pids():
            if pid in leaders:
                continue
            group = _group_id(pid)
            if group is None or group not in leaders:
                continue
            started = create_time(pid)
            if started is not None and started >= leaders[group].create_time:
                self._record(pid, started, lambda pid, group=group: _group_id(pid) == group
                             and leaders[group].holds_pid())

    def adopt_slurm_task(self, process: TrackedProcess, status_file: Path) -> None:
        """A rank that is a Slurm task's child (chaos.supervisor.hosts.slurm_task): its shim reaps it and writes
        how it ended to `status_file`; the shim is the run's too, so teardown ends it with its rank."""
        process.expect_status_file(status_file)
        if process.status_writer is not None:
            self._record(*process.status_writer)

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


def _parent_pid(pid: int) -> int | None:
    try:
        return psutil.Process(pid).ppid()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def _group_id(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def still_running(pid: int) -> bool:
    """Alive and not a zombie (a zombie holds nothing but its exit status)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _live_untracked(table: ProcessTable) -> list[tuple[int, float]]:
    tracked = {p.pid for p in table.all_tracked()}
    return [(pid, table.descendants[pid]) for pid, pidfd in table.pidfds.items()
            if pid not in tracked and not pidfd_exited(pidfd)]


def _alive_not_zombie(pid: int, started: float) -> bool:
    try:
        process = psutil.Process(pid)
        return process.create_time() == started and process.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def _signal_untracked(table: ProcessTable, pid: int, signal_name: str) -> bool:
    """Through the pidfd the descendant was recorded with: never a bare pid."""
    pidfd = table.pidfds.get(pid)
    if pidfd is None:
        return False
    try:
        signal.pidfd_send_signal(pidfd, signal.Signals[signal_name])
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
        if _signal_untracked(table, pid, name):
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
        if _signal_untracked(table, pid, "SIGKILL"):
            sigkill.append(pid)
    _wait_until_gone(table, time.monotonic() + 2.0, poll_s)
    for process in table.all_tracked():
        if not process.exited and not process.alive():
            process.mark_exited(time.monotonic())
        process.reap()
    survivors = [p.pid for p in table.all_tracked() if p.popen is None and p.alive()]
    survivors += [p.pid for p in table.all_tracked() if p.popen is not None and p.popen.returncode is None]
    survivors += [pid for pid, _ in _live_untracked(table)]
    table.close_descendants()
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
