"""Nothing of a run outlives its supervisor, however the supervisor ends (SIGKILL, the OOM killer, a CI
timeout, a closed terminal).

Ranks run in sessions of their own (so a Ctrl-C reaches only the supervisor, which then tears them down),
which also means nothing ties them to the supervisor's life: killed, it would leave them training, holding
GPUs and writing checkpoints into a run directory a new run may already be using. Three layers:

- each launched process asks the kernel for SIGKILL when its parent (the supervisor) dies
  (PR_SET_PDEATHSIG, set in the child before exec): direct ranks and torchrun agents die at once;
- each attempt gets a cgroup v2 of its own where the machine allows it, joined by every launched process
  before exec, so its whole tree (torchrun workers, data-loader workers, a grandchild that setsid()s away)
  is in it: teardown ends with `cgroup.kill`, which misses nothing;
- a watchdog process (chaos.ownership.watchdog), the supervisor's child on a pipe: when the pipe closes
  without a goodbye (the supervisor died), it kills what it was told to guard: the attempt's cgroup, or,
  where there is no cgroup, every member of the launched processes' groups (younger than the leader the
  supervisor recorded, so a reused id is never hit) and then exits. It never signals anything else.

Where cgroups are not writable the run says so once (supervisor.jsonl `lifeline`), and the group fallback
applies. Linux only, torch-free.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from chaos.ownership import watchdog

PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """In a freshly forked child: SIGKILL me when my parent dies; exit now if it already has (the signal
    would never come). Called between fork and exec, so: no allocation-heavy work, no exceptions out."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:
        os._exit(1)


def child_setup(parent_pid: int, cgroup_procs: str | None):
    """The preexec function of every process the supervisor launches: join the attempt's cgroup, then tie
    its life to the supervisor's."""
    def setup() -> None:
        if cgroup_procs is not None:
            try:
                with open(cgroup_procs, "w") as handle:
                    handle.write("0")  # "0" = the writing process itself
            except OSError:
                pass  # the watchdog's group fallback still covers it
        die_with_parent(parent_pid)
    return setup


# ---- cgroup v2 ---------------------------------------------------------------------------------------
def _cgroup2_mount() -> Path | None:
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split(" - ")
        if len(fields) == 2 and fields[1].split()[0] == "cgroup2":
            return Path(fields[0].split()[4])
    return None


def _own_cgroup2_path() -> str | None:
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                return line[3:]
    except OSError:
        return None
    return None


class AttemptCgroup:
    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def procs_file(self) -> str:
        return str(self.path / "cgroup.procs")

    def pids(self) -> list[int]:
        try:
            return [int(pid) for pid in (self.path / "cgroup.procs").read_text().split()]
        except OSError:
            return []

    def kill(self, timeout_s: float = 2.0) -> list[int]:
        """SIGKILL everything still in it (cgroup.kill: the kernel, atomically, forks in flight included);
        returns who was there. Waits until it is empty or timeout_s passes."""
        present = self.pids()
        if present:
            try:
                (self.path / "cgroup.kill").write_text("1")
            except OSError:
                for pid in present:  # an older kernel without cgroup.kill: each one checked under a pidfd
                    watchdog.kill_verified(pid, watchdog.in_cgroup(self.path))
            deadline = time.monotonic() + timeout_s
            while self.pids() and time.monotonic() < deadline:
                time.sleep(0.005)
        return present

    def remove(self) -> None:
        try:
            self.path.rmdir()
        except OSError:
            pass


def create_attempt_cgroup(run_id: str, attempt: int) -> tuple[AttemptCgroup | None, str | None]:
    """(the attempt's cgroup, None) or (None, why not)."""
    return create_cgroup(f"chaos-{run_id}-attempt-{attempt:02d}")


def create_cgroup(name: str) -> tuple[AttemptCgroup | None, str | None]:
    """(a cgroup v2 NAME beside ours, None) or (None, why not)."""
    mount, own = _cgroup2_mount(), _own_cgroup2_path()
    if mount is None or own is None:
        return None, "no cgroup v2 hierarchy is mounted"
    path = mount / own.lstrip("/") / name
    try:
        path.mkdir()
        probe_file = path / "cgroup.procs"
        if not os.access(probe_file, os.W_OK):
            path.rmdir()
            return None, f"{probe_file} is not writable"
    except OSError as error:
        return None, f"cannot create a cgroup under {path.parent}: {error.strerror or error}"
    return AttemptCgroup(path), None


# ---- the watchdog -----------------------------------------------------------------------------------------
class Watchdog:
    """The supervisor's side of chaos.ownership.watchdog."""

    def __init__(self) -> None:
        self._process = subprocess.Popen([sys.executable, "-m", "chaos.ownership.watchdog"], stdin=subprocess.PIPE,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         start_new_session=True, close_fds=True, text=True)

    def _say(self, line: str) -> None:
        try:
            assert self._process.stdin is not None
            self._process.stdin.write(line + "\n")
            self._process.stdin.flush()
        except (OSError, ValueError):
            pass  # a dead watchdog: the other layers still hold

    def guard_cgroup(self, cgroup: AttemptCgroup | Path) -> None:
        """An attempt's cgroup, or a straggler's (cgroup v1 cpu): on the supervisor's death its processes are
        killed and the cgroup removed."""
        self._say(f"cgroup {cgroup.path if isinstance(cgroup, AttemptCgroup) else cgroup}")

    def guard_group(self, pgid: int, leader_create_time: float) -> None:
        self._say(f"group {pgid} {leader_create_time!r}")

    def release_all(self) -> None:
        """What it guards is torn down and verified gone: forget it."""
        self._say("release")

    def close(self) -> None:
        """A normal end: the goodbye tells it nothing is left to kill."""
        self._say("goodbye")
        try:
            assert self._process.stdin is not None
            self._process.stdin.close()
        except OSError:
            pass
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
