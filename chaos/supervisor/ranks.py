"""The rank handshake: connections to the control socket accepted, each one's hello checked against the
processes this attempt launched (or their descendants; on another host, what its agent vouches for), the
accepted rank sent its plan, and its holds passed on to the fault landing.
"""

from __future__ import annotations

import selectors
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from chaos import control
from chaos import history
from chaos import safe_files
from chaos.history import RANK_REJECTED
from chaos.ownership.processes import ProcessTable, TrackedProcess, create_time
from chaos.ownership.sweep import environ_has
from chaos.supervisor import listener as listening
from chaos.supervisor.attempt_context import AttemptContext
from chaos.supervisor.control_server import Connection
from chaos.supervisor.history_tail import HistoryTail
from chaos.supervisor.hosts import slurm_task
from chaos.supervisor.hosts.agents import AgentLink, AgentLost, RemoteProcess


@dataclass
class Rank:
    """A rank whose hello was accepted: its connection, its process and its history's tail."""
    rank: int
    connection: Connection
    process: TrackedProcess
    tail: HistoryTail
    held: dict[str, dict] = field(default_factory=dict)   # fault_id -> {step, phase, index, since}
    awaiting_death_since: float | None = None
    """When a fault that ends the attempt was done to it: its dying is not a hang (for hang_timeout_s; a rank
    that survives it, say one catching the exception it was made to raise, is judged by hang detection)."""


class RankHandshake:
    """One attempt's side of the control socket. `ranks` (filled here), `table`, `selector` and `links` are the
    attempt's; `accepted(rank, pid)` takes in a rank whose hello was accepted and returns the holds of its
    plan; `held(rank, fault_id, step, phase, index)` says the rank is held at a fault (False: no such fault)."""

    def __init__(self, context: AttemptContext, number: int, directory: Path, selector: selectors.BaseSelector,
                 table: ProcessTable, ranks: dict[int, Rank], links: dict[int, AgentLink],
                 accepted: Callable[[Rank, int], list[dict]],
                 held: Callable[[Rank, str, int | None, str | None, int | None], bool],
                 next_attempt: Callable[[Connection, dict], None] | None = None) -> None:
        self.ctx = context
        self.spec = context.launch
        self.number = number
        self.directory = directory
        self.selector = selector
        self.table = table
        self.ranks = ranks
        self.links = links
        self.accepted = accepted
        self.held = held
        self.next_attempt = next_attempt
        """restart.by: job: takes a hello of the job's next attempt (its launcher restarted the workers), which
        the next Attempt replays; None: such a hello is a straggler's."""

    # ---- events ---------------------------------------------------------------------------------------
    def accept(self) -> None:
        server = self.ctx.server
        server.expected = self.spec.world_size
        for _ in range(listening.ACCEPTS_PER_WAKEUP):  # the rest at the next wakeup: the loop has other work
            connection = server.accept()
            if connection is None:
                return
            self.selector.register(connection.sock, selectors.EVENT_READ, ("message", connection))

    def drop_overdue(self, now: float) -> None:
        """A connection without an accepted hello past its deadline is dropped (what it sent is read first: a
        hello that came while the loop was busy still counts)."""
        server = self.ctx.server
        for connection in server.overdue(now):
            self.on_readable(connection)
            if connection.rank is None and not connection.closed:
                server.reject(connection, f"no hello within {listening.HELLO_DEADLINE_S:.0f} s")

    def on_readable(self, connection: Connection) -> None:
        for message in self.ctx.server.receive(connection):
            if connection.closed:
                return  # dropped by an earlier message of the same read
            kind = message.get("type")
            if connection.rank is None:  # nothing is acted on before a hello with the run's token
                if kind == "hello" and control.token_matches(message.get("token"), self.ctx.run_token):
                    self._on_hello(connection, message)
                else:
                    self.ctx.server.reject(connection, "its first message was not a hello with this run's token")
            elif kind == "held":
                self._on_held(connection, message)

    def replay(self, connection: Connection, message: dict) -> None:
        """A hello the previous attempt received for this one (restart.by: job), taken in as if it came now."""
        self.selector.register(connection.sock, selectors.EVENT_READ, ("message", connection))
        self._on_hello(connection, message)

    def _on_hello(self, connection: Connection, message: dict) -> None:
        """A hello with the run's token (checked by the caller): the rank it names is accepted only when the
        process that holds this connection is the one we launched as that rank (or its descendant)."""
        rank, pid, attempt, host = message.get("rank"), message.get("pid"), message.get("attempt"), message.get("host")
        problem = None
        if not _is_int(attempt) or not _is_int(rank) or not _is_int(pid) or not isinstance(host, (str, type(None))):
            problem = ("a hello whose rank, pid or attempt is not an integer (or host not a string): "
                       f"{safe_files.one_line(message, 200)}")
        elif attempt == self.number + 1 and self.next_attempt is not None:
            self.next_attempt(connection, message)
            return
        elif attempt != self.number:
            problem = f"hello for attempt {attempt} during attempt {self.number} (a straggler)"
        elif not 0 <= rank < self.spec.world_size:
            problem = f"rank {rank} outside 0..{self.spec.world_size - 1}"
        elif connection.peer_pid is not None and pid != connection.peer_pid:
            # SO_PEERCRED: the kernel's word on who connected. A process naming another's pid is an impostor,
            # refused before its claim is looked at, so it can neither take the rank nor make the real one
            # "say hello twice".
            problem = f"the hello says pid {pid} but pid {connection.peer_pid} connected (the kernel's SO_PEERCRED)"
        elif rank in self.ranks:
            problem = f"rank {rank} said hello twice"
        process = None if problem else self._verify_rank(rank, pid, host, connection)
        if process is None:
            self.ctx.record(RANK_REJECTED, attempt=self.number, rank=rank if _is_int(rank) else None,
                            pid=pid if _is_int(pid) else None,
                            reason=problem or "not a process of this attempt (not launched by us, nor a descendant)")
            self.ctx.server.drop(connection)  # the probe sees EOF instead of a plan and exits
            return
        connection.rank = rank
        self.ranks[rank] = Rank(rank, connection, process,
                                HistoryTail(history.rank_history_path(self.ctx.run_dir, self.number, rank)))
        self.ctx.record(history.RANK_HELLO, attempt=self.number, rank=rank, pid=pid, node=process.node)
        connection.send({"type": "plan", "holds": self.accepted(self.ranks[rank], pid)})

    def _verify_rank(self, rank: int, pid: object, host: object = None,
                     connection: Connection | None = None) -> TrackedProcess | RemoteProcess | None:
        """The rank process behind a hello, only if it is one we launched or a descendant of one. On the Unix
        socket `pid` is the kernel's (the caller refused a hello naming another); on TCP the rank's agent
        vouches that `pid` holds the connection (_verify_remote_rank)."""
        if not _is_int(pid):
            return None
        if self.ctx.launcher == "direct":
            launched = next(p for p in self.table.launched if p.rank == rank)
            if pid == launched.pid:
                return launched
            if self.table.launched_ancestor(pid) is not launched:
                return None
            node = launched.node
        elif self.links:
            return self._verify_remote_rank(rank, pid, host, connection)
        elif self.ctx.launcher == "slurm":
            # a Slurm task's parent is the node's slurmstepd, not a process of ours: it is ours when it carries
            # this run's token and attempt (only what we started through srun does), on one of our hosts
            if not environ_has(pid, f"{control.ENV_RUN_TOKEN}={self.ctx.run_token}",
                               f"{control.ENV_ATTEMPT}={self.number}"):
                return None
            node = self.ctx.hosts.node_of(pid) if self.ctx.hosts is not None else None
        else:
            agent = self.table.launched_ancestor(pid)
            if agent is None:
                return None
            node = agent.node
        started = create_time(pid)
        process = TrackedProcess.adopt(pid, started, role="rank", rank=rank, node=node) if started else None
        if process is not None:
            if self.ctx.launcher == "slurm":
                self.table.adopt_slurm_task(process, slurm_task.exit_status_path(self.directory, rank))
            self.table.ranks[rank] = process
            self.selector.register(process.pidfd, selectors.EVENT_READ, ("exit", process))
        return process

    def _verify_remote_rank(self, rank: int, pid: int, host: object,
                            connection: Connection | None) -> RemoteProcess | None:
        """On another host the pid means something only to that host's agent: the rank it started there
        (launcher: slurm), or a worker of the torchrun it started there, which it then adopts.

        A hello's pid is only a claim. The agent accepts it only if process `pid` on its host holds the socket
        of this very connection: the TCP connection's two ends (address, port) name one socket in that host's
        network namespace (/proc/PID/net/tcp gives its inode), and a process holds that socket only if it
        made it or was handed it (/proc/PID/fd). So an impostor, even one with the run's token on the same
        host, cannot be taken for another rank's process: the pid it names does not hold its connection."""
        if connection is None or connection.peer is None or connection.local is None:
            return None
        holds = {"connection": {"rank_end": list(connection.peer), "controller_end": list(connection.local)}}
        started = next((p for p in self.table.launched if isinstance(p, RemoteProcess) and p.role == "rank"
                        and p.rank == rank), None)
        if started is not None:
            if started.pid != pid or started.link.lost is not None:
                return None
            try:
                answer = started.link.request({"type": "vouch", "pid": pid, **holds})
            except AgentLost:
                return None
            if answer.get("holds") is not True:
                return None
            self.table.ranks[rank] = started
            return started
        link = next((l for l in self.links.values() if l.info.host == host and l.lost is None), None)
        if link is None:
            return None
        try:
            exit_file = slurm_task.exit_status_path(self.directory, rank) if self.ctx.launcher == "slurm" else None
            answer = link.request({"type": "adopt", "pid": pid, "rank": rank,
                                   "exit_file": str(exit_file) if exit_file else None, **holds})
        except AgentLost:
            return None
        if not answer.get("adopted"):
            return None
        process = RemoteProcess(link, pid, rank, link.info.node)
        link.processes[pid] = process
        self.table.ranks[rank] = process
        self.selector.register(process.pidfd, selectors.EVENT_READ, ("exit", process))
        return process

    def _on_held(self, connection: Connection, message: dict) -> None:
        fault_id, step, phase, index = (message.get(key) for key in ("fault_id", "step", "phase", "index"))
        if not isinstance(fault_id, str) or not isinstance(phase, (str, type(None))) \
                or not all(value is None or _is_int(value) for value in (step, index)):
            self.ctx.server.drop(connection)  # not what a probe sends: no value of it is used
            return
        rank = self.ranks.get(connection.rank)
        if rank is None or not self.held(rank, fault_id, step, phase, index):
            connection.send({"type": "release", "fault_id": fault_id})


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)

