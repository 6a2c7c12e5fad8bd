"""The processes beside a rank that a fault may hit instead of it (chaos.plan.Target.process): the elastic
agent that started it (`launcher`) and ft_launcher's rank monitor watching it (`rank_monitor`).

Both are found from what the kernel says, never from what the job says: the launcher is the launched agent
the rank descends from; the rank monitor is the process, among that agent's descendants, that holds the
listening Unix socket named in the rank's FT_RANK_MONITOR_IPC_SOCKET (the monitor binds it, the rank
connects to it). A process found any other way is not signalled.
"""

from __future__ import annotations

import os

import psutil

from chaos.ownership.processes import ProcessTable, TrackedProcess, create_time

ENV_MONITOR_SOCKET = b"FT_RANK_MONITOR_IPC_SOCKET="
SO_ACCEPTCON = 0x10000
"""/proc/net/unix Flags bit of a listening socket."""


def find(kind: str, rank: TrackedProcess, table: ProcessTable) -> tuple[TrackedProcess | None, str]:
    """(the process, "") or (None, why not)."""
    agent = table.launched_ancestor(rank.pid)
    if agent is None or agent.role != "agent":
        return None, f"the rank has no launcher of this run (pid {rank.pid} descends from no launched agent)"
    if kind == "launcher":
        return (agent, "") if not agent.exited else (None, "the rank's launcher had already exited")
    socket_path = _monitor_socket(rank.pid)
    if socket_path is None:
        return None, "the rank has no rank monitor (no FT_RANK_MONITOR_IPC_SOCKET in its environment)"
    inodes = _listening_inodes(socket_path)
    for pid in _descendants(agent.pid):
        if pid != rank.pid and _holds_socket(pid, inodes) and table.launched_ancestor(pid) is agent:
            started = create_time(pid)
            monitor = TrackedProcess.adopt(pid, started, role="rank_monitor", rank=rank.rank,
                                           node=rank.node) if started else None
            if monitor is not None:
                return monitor, ""
    return None, f"no process of the rank's launcher listens on its rank monitor socket {socket_path!r}"


def _monitor_socket(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            entries = handle.read().split(b"\0")
    except OSError:
        return None
    for entry in entries:
        if entry.startswith(ENV_MONITOR_SOCKET):
            return os.fsdecode(entry[len(ENV_MONITOR_SOCKET):]) or None
    return None


def _listening_inodes(path: str) -> set[str]:
    """Inodes of the listening Unix sockets bound to `path` (/proc/net/unix: Num RefCount Protocol Flags Type
    St Inode Path)."""
    inodes = set()
    try:
        with open("/proc/net/unix") as handle:
            next(handle, None)
            for line in handle:
                fields = line.split(None, 7)
                if len(fields) == 8 and fields[7].rstrip("\n") == path and int(fields[3], 16) & SO_ACCEPTCON:
                    inodes.add(fields[6])
    except (OSError, ValueError):
        return set()
    return inodes


def _descendants(pid: int) -> list[int]:
    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return []


def _holds_socket(pid: int, inodes: set[str]) -> bool:
    if not inodes:
        return False
    wanted = {f"socket:[{inode}]" for inode in inodes}
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in wanted:
                    return True
            except OSError:
                continue
    except OSError:
        return False
    return False
