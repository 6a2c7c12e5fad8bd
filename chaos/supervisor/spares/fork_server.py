"""The supervisor's side of the fork server (restart.warm: fork; the zygote itself is
chaos.supervisor.spares.zygote): one zygote per run, started with the run, asked for each rank of each attempt.

A forked rank is the zygote's child, not ours: it is tracked as an adopted process (a pidfd opened on it, its
parent checked to be our zygote after), its exit status read from the file the zygote writes when it reaps it
(TrackedProcess.status_file), and it is torn down like any rank (its own session, the attempt's cgroup). A
fork the zygote refuses (its hygiene check failed), or one it cannot answer (it died, or it is still importing
past the start-up timeout), leaves that rank to a cold start; the reason is kept for the attempt's record.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Mapping

import psutil

from chaos import safe_files
from chaos.ownership.lifeline import child_setup
from chaos.ownership.processes import TrackedProcess, create_time
from chaos.supervisor.spares.zygote import ENV_CHANNEL_FD, ENV_RUN_DIR
from chaos.workloads.base import LaunchSpec, WarmStart


class ForkServer:
    """A zygote importing spec.warm.imports under the environment a cold rank imports under (the run's
    environment + spec.env: thread counts and CPU pins are read at import), in spec.cwd."""

    started_event = "zygote_started"  # chaos.history.ZYGOTE_STARTED

    def __init__(self, spec: LaunchSpec, directory: Path, env: Mapping[str, str], run_dir: Path,
                 ready_timeout_s: float) -> None:
        assert spec.warm is not None
        self.spec = spec
        self.directory = directory
        self.env = dict(env)
        self.run_dir = run_dir
        self.ready_timeout_s = ready_timeout_s
        self.popen: subprocess.Popen | None = None
        self.channel: socket.socket | None = None
        self.ready: dict | None = None
        """The zygote's ready message (its pid, import seconds, hygiene problems at that time)."""
        self.refusal: str | None = None
        """Why the last fork asked for was not made (None: it was)."""
        self._buffer = b""
        self._started = 0

    # ---- life ---------------------------------------------------------------------------------------
    def start(self) -> int:
        """Starts a zygote (its imports begin now); returns its pid."""
        self.directory.mkdir(parents=True, exist_ok=True)
        ours, theirs = socket.socketpair()
        log = safe_files.open_append(self.directory / f"zygote-{self._started:03d}.out")
        self._started += 1
        try:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "chaos.supervisor.spares.zygote", *self.spec.warm.imports],
                env={**self.env, ENV_CHANNEL_FD: str(theirs.fileno()), ENV_RUN_DIR: str(self.run_dir)},
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                close_fds=True, pass_fds=(theirs.fileno(),), cwd=self.spec.cwd,
                preexec_fn=child_setup(os.getpid(), None))
        finally:
            log.close()
            theirs.close()
        self.channel, self.ready, self._buffer = ours, None, b""
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def missing(self) -> int:
        """How many zygotes should be started now (1 after one died)."""
        return 0 if self.alive() else 1

    def refill(self) -> list[int]:
        """A new zygote in place of a dead one; returns the new pids (none while one lives)."""
        if self.alive():
            return []
        self._stop()
        return [self.start()]

    def pids(self) -> list[int]:
        """The run's own token holders that are no attempt's (the token sweep leaves them alone)."""
        return [self.popen.pid] if self.alive() else []

    def close(self) -> None:
        self._stop()

    def _stop(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if self.popen is not None:
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)  # our unreaped child leads its own group
            except ProcessLookupError:
                pass
            self.popen.wait()
            self.popen = None

    # ---- forks --------------------------------------------------------------------------------------
    def start_rank(self, env: Mapping[str, str], output: Path, status: Path, cgroup_procs: str | None,
                   rank: int, node: int, entry: WarmStart | None = None) -> TrackedProcess | None:
        """Rank `rank` forked from the zygote with what a cold rank of spec.argv would get; None when the
        zygote did not fork it (self.refusal says why): start it cold. `entry`: another entry point than
        spec.warm's (its arguments differ), for the same imports."""
        warm = entry or self.spec.warm
        assert warm is not None
        order = {"env": dict(env), "output": str(output), "status": str(status), "cgroup_procs": cgroup_procs,
                 "cwd": str(self.spec.cwd) if self.spec.cwd else None, "module": warm.module,
                 "script": warm.script, "args": list(warm.args)}
        self.refusal = None
        answer = self._ask({"fork": order})
        if answer is None:
            return None
        if "refused" in answer:
            self.refusal = f"the zygote refused to fork: {answer['refused']}"
            return None
        process = self._adopt(int(answer["pid"]), rank, node)
        if process is None:
            self.refusal = f"the zygote's child {answer['pid']} was gone before it could be tracked"
            return None
        process.expect_status_file(status)
        process.start, process.fork_mono = "fork", float(answer["fork_mono"])
        return process

    def _adopt(self, pid: int, rank: int, node: int) -> TrackedProcess | None:
        """Tracks the zygote's child `pid`: the pidfd first, then its parent checked to be our zygote (so the
        pidfd names the child it forked, not a process that got a recycled pid)."""
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return None
        try:
            parent = psutil.Process(pid).ppid()
        except psutil.Error:
            parent = None
        started = create_time(pid)
        if self.popen is None or parent != self.popen.pid or started is None:
            os.close(pidfd)
            return None
        return TrackedProcess(pid=pid, create_time=started, role="rank", rank=rank, node=node, pidfd=pidfd)

    def _ask(self, message: dict) -> dict | None:
        if not self.alive() or self.channel is None:
            self.refusal = "the zygote is not running" + self._ended()
            return None
        try:
            self.channel.sendall((json.dumps(message) + "\n").encode())
        except OSError as error:
            self.refusal = f"the zygote did not take the order ({error})" + self._ended()
            return None
        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            line = self._read_line(deadline)
            if line is None:
                return None
            answer = json.loads(line)
            if answer.get("ready"):
                self.ready = answer
                continue
            return answer

    def _read_line(self, deadline: float) -> bytes | None:
        assert self.channel is not None
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            readable, _, _ = select.select([self.channel], [], [], max(0.0, left))
            if not readable:
                self.refusal = f"the zygote did not answer within {self.ready_timeout_s:g} s (still importing?)"
                self._stop()  # its answer would come out of order; the next attempt starts a new one
                return None
            chunk = self.channel.recv(1 << 16)
            if not chunk:
                self.refusal = "the zygote died" + self._ended()
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    def _ended(self) -> str:
        if self.popen is None:
            return ""
        code = self.popen.poll()
        return f" (exit {code}; its log is {self.directory})" if code is not None else ""
