"""Straggler faults: a rank (or every rank of a node) gets at most `cpus` CPUs for `duration_s` seconds
through a CPU quota (CFS bandwidth control) on a cgroup of its own, as a host slowed by a noisy neighbour,
thermal throttling or a bad DIMM is: still working, only slower, and every collective waits for it.

The quota lives in the cgroup v1 `cpu` hierarchy, beside the cgroup v2 one chaos keeps each attempt's
processes in (the lifeline): moving a rank there for a while leaves its attempt cgroup, and so teardown
and the no-survivors check, untouched. On a machine with cgroup v2 only that split is impossible (a
process is in one cgroup, and the attempt's cannot both hold processes and give its children a CPU
controller), and the fault is recorded as missed, saying so. Either way a straggler is no hang: its
ranks keep writing history, so hang detection stays quiet unless one step outlasts hang_timeout_s.

    faults:
      - at: {step: 3, phase: forward}
        target: {rank: 1}
        straggler: {cpus: 0.25, duration_s: 8}   # the target's processes share 0.25 CPU for 8 s

`Throttle.stop` releases the throttle (each process back to the cpu cgroup it came from, the throttle's
cgroup removed); the supervisor calls it when the duration is over, or when the attempt ends.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chaos.faults.kind import MAX_STALL_S, Action, FaultContext, Started

PERIOD_US = 100_000
"""CFS period: quotas are cpus x 100 ms per 100 ms (MIN_STRAGGLER_CPUS: at least 1 ms)."""
MIN_STRAGGLER_CPUS = 0.01
"""The smallest CPU share a straggler may get: a quota of 1 ms per 100 ms period, the kernel's floor."""
STRAGGLER_KEYS = ("cpus", "duration_s")


@dataclass(frozen=True)
class Straggler(Action):
    kind = "straggler"
    takes_host = True
    stall = True
    changes_host = True
    cpus: float
    """The CPUs the target's processes get together meanwhile (0.25 = a quarter)."""
    duration_s: float
    """How long the CPU quota holds."""

    @classmethod
    def from_yaml(cls, read: Any, value: Any, where: str) -> "Straggler":
        raw = read.mapping(value, where, STRAGGLER_KEYS)
        for key in STRAGGLER_KEYS:
            if key not in raw:
                raise read.error(f"{where}.{key}", "missing; expected e.g. straggler: {cpus: 0.25, duration_s: 8} "
                                                   "(the target's processes share 0.25 CPU for 8 s)")
        cpus = read.number(raw["cpus"], f"{where}.cpus", strict=True)
        if cpus < MIN_STRAGGLER_CPUS:
            raise read.error(f"{where}.cpus", f"expected at least {MIN_STRAGGLER_CPUS:g} (1 ms per 100 ms, the "
                                              f"kernel's smallest quota), got {cpus:g}")
        seconds = read.number(raw["duration_s"], f"{where}.duration_s", strict=True)
        if seconds > MAX_STALL_S:
            raise read.error(f"{where}.duration_s", f"expected seconds <= {MAX_STALL_S:g}, got {seconds:g}")
        return cls(cpus=cpus, duration_s=seconds)

    def to_yaml(self) -> Any:
        return {"cpus": self.cpus, "duration_s": self.duration_s}

    def describe(self) -> str:
        return f"straggler {self.cpus:g} CPU for {self.duration_s:g}s"

    def stall_phrase(self) -> str:
        return f"a straggler ({self.cpus:g} CPU for {self.duration_s:g}s) on"

    def start(self, context: FaultContext) -> "Throttle":
        reason = unavailable_reason()
        if reason is not None:
            raise RuntimeError(reason)
        root = cpu_hierarchy()
        assert root is not None
        path = root / (context.cgroup_name or f"chaos-straggler-{os.getpid()}")
        path.mkdir()
        throttle = Throttle([], landed={"duration_s": self.duration_s, "cpus": self.cpus, "cgroup": str(path)},
                            cgroup=path)
        try:
            (path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (path / "cpu.cfs_quota_us").write_text(str(max(1000, int(self.cpus * PERIOD_US))))
            for process in context.targets:
                if not process.alive():
                    continue
                try:
                    origin = _cpu_cgroup_of(process.pid, root)
                    (path / "cgroup.procs").write_text(str(process.pid))
                except OSError:
                    continue  # it exited meanwhile
                throttle.origins[process.pid] = origin
                throttle.delivered.append(process.pid)
        except BaseException:
            throttle.release()
            raise
        return throttle


def cpu_hierarchy(mountinfo: str = "/proc/self/mountinfo") -> Path | None:
    """Where the cgroup v1 `cpu` controller is mounted (/sys/fs/cgroup/cpu or .../cpu,cpuacct), if it is."""
    try:
        lines = Path(mountinfo).read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        before, _, after = line.partition(" - ")
        fields = after.split()
        if len(fields) >= 3 and fields[0] == "cgroup" and "cpu" in fields[2].split(","):
            return Path(before.split()[4])
    return None


def unavailable_reason() -> str | None:
    """None where a straggler can be made here; else why not, in words a user can act on."""
    root = cpu_hierarchy()
    if root is None:
        return ("a straggler needs the cgroup v1 `cpu` controller (CFS quota), and none is mounted here; on a "
                "cgroup v2-only machine chaos cannot give a rank a CPU quota of its own yet")
    if not os.access(root, os.W_OK):
        return f"a straggler needs write access to {root} (the cgroup v1 cpu hierarchy): run chaos as root"
    return None


def _cpu_cgroup_of(pid: int, root: Path) -> Path:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "cpu" in controllers.split(","):
            return root / path.lstrip("/")
    return root


@dataclass
class Throttle(Started):
    origins: dict[int, Path] = field(default_factory=dict)
    """pid -> the cpu cgroup it was in, where it goes back."""

    @property
    def path(self) -> Path:
        assert self.cgroup is not None
        return self.cgroup

    def stop(self, ran_its_course: bool) -> dict[str, Any]:
        return {"released": self.release()}

    def release(self) -> list[int]:
        """Every throttled process still there back where it was, then the cgroup removed; the pids moved."""
        moved = []
        remaining = set(int(p) for p in (self.path / "cgroup.procs").read_text().split()) if self.path.exists() else set()
        for pid, origin in self.origins.items():
            if pid not in remaining:
                continue
            try:
                (origin / "cgroup.procs").write_text(str(pid))
                moved.append(pid)
            except OSError:
                pass  # gone between the read and the write
        self.remove()
        return moved

    def remove(self) -> None:
        for _ in range(50):  # a process just killed may take a moment to leave the cgroup
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.02)
