"""`python -m chaos.ownership.watchdog`: kills what a dead supervisor left behind (chaos.ownership.lifeline).

Reads instructions on stdin, one per line, from the supervisor that started it:

    cgroup PATH               guard a cgroup (every process in it belongs to the run)
    group PGID CREATE_TIME    guard a process group: its leader was created at CREATE_TIME
    release                   everything guarded so far is gone: forget it
    goodbye                   the supervisor is ending normally: nothing to do at EOF

At EOF without a goodbye the supervisor died: SIGKILL every process in the guarded cgroups and every
member of the guarded groups that is not older than its leader, then exit. A group whose id now belongs to
another process's group is not ours: the kernel never hands out a pid that is in use as a group id, so while
any member of our group lives the id cannot be someone else's; once a process with that pid exists and was
created at another time than our leader, our group is gone and the id was reused. Every signal goes through a
pidfd opened before the process is checked, so a pid freed and reused between the check and the kill is never
signalled. Standard library only (no psutil: it must start in milliseconds and never fail to).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _start_time(pid: int) -> float | None:
    """Seconds since boot at which `pid` started (/proc/PID/stat field 22), comparable between processes."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[19]) / CLOCK_TICKS


def _boot_time() -> float:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    return 0.0


def kill_verified(pid: int, still_ours) -> bool:
    """SIGKILL `pid` only if `still_ours(pid)` holds once a pidfd holds the process: the check and the signal
    then see the same process, never one that got the pid in between."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return False
    try:
        if not still_ours(pid):
            return False
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        return True
    except OSError:
        return False
    finally:
        os.close(pidfd)


def in_cgroup(path: Path):
    """A still_ours for kill_verified: the process is (still) a member of the cgroup at `path`."""
    def check(pid: int) -> bool:
        try:
            return str(pid) in (path / "cgroup.procs").read_text().split()
        except OSError:
            return False
    return check


def _kill_cgroup(path: Path) -> None:
    try:
        (path / "cgroup.kill").write_text("1")
    except OSError:
        try:
            for pid in (path / "cgroup.procs").read_text().split():  # an older kernel without cgroup.kill
                kill_verified(int(pid), in_cgroup(path))
        except (OSError, ValueError):
            pass
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        try:
            if not (path / "cgroup.procs").read_text().split():
                break
        except OSError:
            break
        time.sleep(0.01)
    try:
        path.rmdir()
    except OSError:
        pass


def _kill_group(pgid: int, leader_created: float) -> None:
    """Every process in group `pgid` started no earlier than its leader (psutil's create_time is boot time +
    start ticks: the same clock, to the tick)."""
    leader_since_boot = leader_created - _boot_time()
    tick = 1.0 / CLOCK_TICKS
    leader_now = _start_time(pgid)
    if leader_now is not None and abs(leader_now - leader_since_boot) > tick:
        return  # the pid of our leader belongs to a process created at another time: the id was reused

    def member(pid: int) -> bool:
        try:
            if os.getpgid(pid) != pgid:
                return False
        except OSError:
            return False
        started = _start_time(pid)
        return started is not None and started >= leader_since_boot - tick

    for entry in os.listdir("/proc"):
        if entry.isdigit() and member(int(entry)):
            kill_verified(int(entry), member)


def main() -> int:
    cgroups: list[Path] = []
    groups: list[tuple[int, float]] = []
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "cgroup" and len(words) == 2:
            cgroups.append(Path(words[1]))
        elif words[0] == "group" and len(words) == 3:
            groups.append((int(words[1]), float(words[2])))
        elif words[0] == "release":
            cgroups, groups = [], []
        elif words[0] == "goodbye":
            return 0
    for path in cgroups:  # EOF without goodbye: the supervisor is gone
        _kill_cgroup(path)
    for pgid, created in groups:
        _kill_group(pgid, created)
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the supervisor's to handle, not ours
    sys.exit(main())
