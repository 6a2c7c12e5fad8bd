"""The run-token sweep: after teardown, whatever still carries the run's token in its environment escaped
everything else (a helper that double-forked, setsid()ed and left the cgroup; what a lost agent left on its
host) and is SIGKILLed, but only if it is the run's. A process that carries the token while running as
another user was not started by the run (the run's processes all run as its user): it is reported
(`Stranger`), never signalled and never counted as the job's. Each candidate is held by a pidfd before it
is inspected, and killed through it.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

import psutil

from chaos.safe_files import one_line
from chaos.ownership.processes import ProcessTable, create_time, pidfd_exited

COMMAND_LIMIT = 200
"""Characters of a swept process's command line kept (escaped with `one_line`: it is that process's text)."""


@dataclass(frozen=True)
class Leaked:
    """A process of the run that escaped teardown, killed by the sweep."""

    pid: int
    command: str
    alive_after_sigkill: bool
    tied_by: str = "token"
    """How it is known to be the run's, beyond the token and the run's user: "recorded" (teardown or the
    attempt's scans had recorded it), "descendant" (its parent chain reaches a process of the run, or the
    sweeping supervisor or agent itself) or "token" (nothing else: a helper that double-forked, setsid()ed
    and left the cgroup, or what an earlier attempt's lost agent left on its host)."""


@dataclass(frozen=True)
class Stranger:
    """A process that carried the run's token but is not the run's: reported, never signalled, never
    counted as the job's."""

    pid: int
    uid: int | None
    command: str
    why: str

    def to_fields(self) -> dict:
        return {"pid": self.pid, "uid": self.uid, "command": self.command, "why": self.why}


def stranger_fields(item: object) -> dict:
    """A stranger as reported by an agent (over the wire): the same fields, its text escaped again here."""
    item = item if isinstance(item, dict) else {}
    pid, uid = item.get("pid"), item.get("uid")
    return {"pid": pid if isinstance(pid, int) else None, "uid": uid if isinstance(uid, int) else None,
            "command": one_line(item.get("command", ""), limit=COMMAND_LIMIT),
            "why": one_line(item.get("why", ""), limit=COMMAND_LIMIT * 2)}


class Swept(list):
    """What a sweep killed (`Leaked` items: the list itself) and, in `strangers`, what it found carrying
    the token without being the run's."""

    def __init__(self, leaked: list[Leaked], strangers: list[Stranger]) -> None:
        super().__init__(leaked)
        self.strangers = strangers


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
                        same_host_only: bool = False, table: ProcessTable | None = None) -> Swept:
    """Finds and SIGKILLs every live process of the run's user whose environment carries `env_line` (the
    run's token, `CHAOS_RUN_TOKEN=...`). Run after teardown, it is the witness independent of how teardown
    found processes (tree, groups, cgroup): whatever escaped all three (a helper that double-forked,
    setsid()ed and left the cgroup) still carries the token. `exclude`: the supervisor's own token holders
    that are not the attempt's (warm spares waiting in the pool). A process that exec()s with an emptied
    environment escapes this too. `same_host_only`: an agent's sweep, only processes in its own network
    namespace (its host: simulated hosts share one process table, and another host's processes are its
    agent's). `table`: the attempt's processes, to say how each find is tied to the run (`Leaked.tied_by`).

    Who is the run's: every process the run starts runs as the user that started it (real uid == our
    euid). A token carrier of another user did not come from the run, whatever it copied into its
    environment: it is a `Stranger`, never signalled. A carrier of the run's own user is killed even when
    nothing but the token ties it to the run: it cannot be told apart from the job's own escaped helper or a
    lost agent's leftovers (which must not outlive the run), and a process of that user could signal the
    ranks and write the run's files itself, so sparing it would protect nothing.

    Each candidate is held by a pidfd opened before anything about it is read, and kept only if it was
    still running once everything was read; the SIGKILL goes through that pidfd."""
    own_uid = os.geteuid()
    known = _known_processes(table)
    killed: list[tuple[int, str, str]] = []  # (pidfd, command, tied_by), in the order of `pids`
    pids: list[int] = []
    strangers: list[Stranger] = []
    for pid in (int(name) for name in os.listdir("/proc") if name.isdigit()):
        if pid in exclude or pid == os.getpid():
            continue
        if same_host_only and not same_host(pid):
            continue
        if not environ_has(pid, env_line):
            continue
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            continue
        seen = _inspect(pid, pidfd, env_line, known)
        if seen is None:
            os.close(pidfd)
            continue
        uid, command, tied_by = seen
        if uid != own_uid:
            os.close(pidfd)
            strangers.append(Stranger(pid, uid, command, f"runs as uid {uid}, not as the run's user (uid {own_uid}): "
                                                         "it was not started by the run; not signalled"))
            continue
        try:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        except ProcessLookupError:
            pass
        killed.append((pidfd, command, tied_by))
        pids.append(pid)
    deadline = time.monotonic() + timeout_s
    while any(not pidfd_exited(pidfd) for pidfd, _, _ in killed) and time.monotonic() < deadline:
        time.sleep(0.01)
    leaked = []
    for pid, (pidfd, command, tied_by) in zip(pids, killed):
        leaked.append(Leaked(pid, command, not pidfd_exited(pidfd), tied_by))
        os.close(pidfd)
    return Swept(leaked, strangers)


def _known_processes(table: ProcessTable | None) -> set[tuple[int, float]]:
    """(pid, create_time) of every process the run knows: tracked, recorded, and the sweeper itself."""
    own = create_time(os.getpid())
    known = {(os.getpid(), own)} if own is not None else set()
    if table is not None:
        known |= {(p.pid, p.create_time) for p in table._local()}
        known |= set(table.descendants.items())
    return known


def _inspect(pid: int, pidfd: int, env_line: str, known: set[tuple[int, float]]) -> tuple[int, str, str] | None:
    """(real uid, command, tied_by) of the running process `pidfd` names, or None (gone, a zombie, or no
    longer carrying the token): read after the pidfd was opened and trusted only if the process still runs
    after the reads."""
    try:
        process = psutil.Process(pid)
        if not environ_has(pid, env_line) or process.status() == psutil.STATUS_ZOMBIE:
            return None
        started = process.create_time()
        uid = process.uids().real
        command = one_line(" ".join(process.cmdline()), limit=COMMAND_LIMIT)
        if (pid, started) in known:
            tied_by = "recorded"
        elif any((parent.pid, parent.create_time()) in known for parent in process.parents()):
            tied_by = "descendant"
        else:
            tied_by = "token"
    except (OSError, psutil.Error):
        return None
    return None if pidfd_exited(pidfd) else (uid, command, tied_by)
