"""restart.by: job: what the job's own launcher says about its recovery, read from its output.

torchrun's elastic agent polls its workers every --monitor-interval; when one has failed it logs (at INFO,
which chaos asks for) `[default] Worker group FAILED. 3/3 attempts left; will restart worker group`, stops
the others (`Sending process N closing signal SIGTERM`) and starts the group again, the restart count one
higher. ft_launcher (NVIDIA's resiliency extension) is the same agent and writes the same lines; before
them, a rank monitor that saw a rank's heartbeats stop says so (`Did not get subsequent heartbeat. Waited
3.00 seconds.`, a section open too long), then kills the rank, which is what the agent sees fail.
The first of these lines after a fault is when the job *detected* it: chaos stamps the moment it
reads the line (it polls every supervisor tick, so the stamp trails the write by at most one tick). The
agent's output is the job's, so it is read as untrusted: without following a link, a bounded amount a tick.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from chaos import safe_files

DETECTED = re.compile(rb"Worker group (FAILED|UNHEALTHY)")
"""The agent saw a worker fail (or the group unhealthy): the job's detection."""
RESTARTING = re.compile(rb"will restart worker group")
STOPPING = re.compile(rb"Sending process \d+ closing signal")
HEARTBEAT = re.compile(rb"Did not get (initial|subsequent) heartbeat|Section '[^']*' has been open|Was out of section")
"""ft_launcher's rank monitor gave up on a rank: its heartbeats (or a section's end) stopped coming."""


@dataclass(frozen=True)
class JobLine:
    node: int
    kind: str
    """detected | restarting | stopping | heartbeat_missed"""
    line: str
    """The line, escaped (chaos.safe_files.one_line)."""
    mono: float


class JobLog:
    """Follows each node's launcher output (`agent-N.out`) for the lines above."""

    PARTIAL_LINE_LIMIT = 1 << 16

    def __init__(self, paths: dict[int, Path]) -> None:
        self.paths = paths
        self._files: dict[int, BinaryIO] = {}
        self._lines = {node: safe_files.LineSplitter(self.PARTIAL_LINE_LIMIT) for node in paths}

    def poll(self, now: float) -> list[JobLine]:
        seen: list[JobLine] = []
        for node, path in self.paths.items():
            handle = self._files.get(node)
            if handle is None:
                try:
                    handle = self._files[node] = open(safe_files.open_regular(path), "rb")
                except OSError:
                    continue
            for _ in range(16):  # a bounded amount a tick: a chatty launcher cannot hold the supervisor here
                data = handle.read(self.PARTIAL_LINE_LIMIT)
                if not data:
                    break
                for line, cut in self._lines[node].feed(data):
                    kind = _kind(line) if not cut else None
                    if kind is not None:
                        seen.append(JobLine(node, kind, safe_files.one_line(line.decode("utf-8", "replace"), 300),
                                            now))
        return seen

    def close(self) -> None:
        for handle in self._files.values():
            handle.close()
        self._files.clear()


def _kind(line: bytes) -> str | None:
    if DETECTED.search(line):
        return "restarting" if RESTARTING.search(line) else "detected"
    if STOPPING.search(line):
        return "stopping"
    if HEARTBEAT.search(line):
        return "heartbeat_missed"
    return None
