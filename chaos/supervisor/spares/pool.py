"""Warm spares: interpreters that have already imported what the workload's ranks import, kept ready so a
restart does not pay for a new interpreter importing torch and megatron-core (seconds per rank).

A spare is spawned (never forked from a process that imported torch), lives in its own session with
PR_SET_PDEATHSIG like every launched process, and is owned by the pool until an attempt takes it: then it is
moved into the attempt's cgroup, tracked like a rank, and sent its order (chaos.supervisor.spares.spare); one still
importing is used too (its order waits until the imports are done, still ahead of a fresh interpreter). A
spare that died is not used (a fresh interpreter takes its place) and is replaced at the next refill.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from chaos import safe_files
from chaos.ownership.lifeline import child_setup
from chaos.ownership.processes import TrackedProcess
from chaos.supervisor.spares.spare import ENV_ORDER_FD
from chaos.workloads.base import LaunchSpec


@dataclass
class Spare:
    popen: subprocess.Popen
    channel: socket.socket
    ready: bool = False

    def poll_ready(self, timeout_s: float = 0.0) -> bool:
        """True once the spare said `ready` (its imports are done)."""
        if not self.ready:
            readable, _, _ = select.select([self.channel], [], [], timeout_s)
            if readable:
                self.ready = self.channel.recv(16).startswith(b"ready")
        return self.ready

    def alive(self) -> bool:
        return self.popen.poll() is None


class SparePool:
    """One spare per rank of `spec`, spawned with the environment a cold rank imports under (the run's
    environment + spec.env: thread counts and CPU pins are read at import)."""

    started_event = "spares_started"  # chaos.history.SPARES_STARTED

    def __init__(self, spec: LaunchSpec, directory: Path, env: Mapping[str, str]) -> None:
        assert spec.warm is not None
        self.spec = spec
        self.directory = directory
        self.env = dict(env)
        self.spares: list[Spare] = []
        self._spawned = 0
        self.refusal: str | None = None

    def refill(self) -> list[int]:
        """Spawns spares until there is one per rank; returns the new pids."""
        for spare in [s for s in self.spares if not s.alive()]:
            self.spares.remove(spare)
            spare.channel.close()
            spare.popen.wait()
        new = []
        while len(self.spares) < self.spec.world_size:
            self.spares.append(self._spawn())
            new.append(self.spares[-1].popen.pid)
        return new

    def take(self) -> Spare | None:
        """A live spare, ready or still importing (its order waits in its channel until the imports are done:
        still ahead of a fresh interpreter), or None: launch that rank cold."""
        for spare in list(self.spares):
            self.spares.remove(spare)
            if spare.alive():
                return spare
            spare.channel.close()
            spare.popen.wait()
        return None

    def pids(self) -> list[int]:
        return [spare.popen.pid for spare in self.spares]

    def close(self) -> None:
        """Kills every spare not handed over (their groups: each leads its own session)."""
        for spare in self.spares:
            spare.channel.close()
            try:
                os.killpg(spare.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            spare.popen.wait()
        self.spares = []

    def _spawn(self) -> Spare:
        self.directory.mkdir(parents=True, exist_ok=True)
        ours, theirs = socket.socketpair()
        log = safe_files.open_append(self.directory / f"spare-{self._spawned:03d}.out")
        self._spawned += 1
        try:
            popen = subprocess.Popen(
                [sys.executable, "-m", "chaos.supervisor.spares.spare", *self.spec.warm.imports],
                env={**self.env, ENV_ORDER_FD: str(theirs.fileno())}, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True, pass_fds=(theirs.fileno(),),
                cwd=self.spec.cwd, preexec_fn=child_setup(os.getpid(), None))
        finally:
            log.close()
            theirs.close()
        return Spare(popen=popen, channel=ours)


    def start_rank(self, env: Mapping[str, str], output: Path, status: Path, cgroup_procs: str | None,
                   rank: int, node: int) -> TrackedProcess | None:
        """Rank `rank` started from a live spare (the launcher's warm-start seam, as ForkServer.start_rank);
        None: none is alive, start it cold. `status` is unused: the spare is our own child, we reap it."""
        spare = self.take()
        if spare is None:
            return None
        try:
            send_order(spare, self.spec, env, output, cgroup_procs)
            process = TrackedProcess.from_popen(spare.popen, role="rank", rank=rank, node=node)
        except BaseException:
            try:
                os.killpg(spare.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            spare.popen.wait()
            raise
        process.start = "spare"
        return process

    def missing(self) -> int:
        """How many spares should be started now (one per rank)."""
        return self.spec.world_size - len(self.spares)


def send_order(spare: Spare, spec: LaunchSpec, env: Mapping[str, str], output: Path,
               cgroup_procs: str | None) -> None:
    """Makes the spare a rank: into the attempt's cgroup first (cgroup.kill covers it from its first
    instruction as a rank), then the order: what a cold rank of spec.argv would get."""
    if cgroup_procs is not None:
        try:
            with open(cgroup_procs, "w") as handle:
                handle.write(str(spare.popen.pid))
        except OSError:
            pass  # as for a cold launch: the watchdog's group fallback still covers it
    warm = spec.warm
    assert warm is not None
    order = {"env": dict(env), "output": str(output), "cwd": str(spec.cwd) if spec.cwd else None,
             "module": warm.module, "script": warm.script, "args": list(warm.args)}
    spare.channel.sendall((json.dumps(order) + "\n").encode())
    spare.channel.close()
