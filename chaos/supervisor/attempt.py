"""One attempt: launch -> watch -> inject -> detect death or hang -> tear down every survivor -> decide.

One `selectors` loop per attempt watches everything at once: a pidfd per process (readable the instant it
exits, so a death is known without polling; for a rank on another host, a pipe its agent's exit report
wakes), the control socket (hellos and holds from the probes), the agents' links and a self-pipe woken by
Ctrl-C / SIGTERM. A short select timeout drives the periodic work: reading the ranks' history tails
(progress, hang detection, the step/phase a wall-clock fault lands at) and wall-clock faults.
"""

from __future__ import annotations

import select
import selectors
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from chaos import control
from chaos import faults as nemesis
from chaos import history
from chaos import safe_files
from chaos.errors import InfrastructureError
from chaos.plan import PlannedFault, cores_for_warm_spares
from chaos.ownership import lifeline
from chaos.supervisor import launcher
from chaos.supervisor.hosts import slurm_task
from chaos.supervisor import listener as listening
from chaos.supervisor.hosts.agents import AgentLink, AgentLost, RemoteProcess, teardown_all
from chaos.supervisor.control_server import Connection
from chaos.supervisor.history_tail import HistoryTail
from chaos.supervisor.observed import ObservedTriggers
from chaos.ownership.processes import (FATAL_BY_DEFAULT, ProcessTable, TrackedProcess, create_time,
                                        returncode_signal, still_running, teardown)
from chaos.ownership.sweep import environ_has, stranger_fields, sweep_token_holders
from chaos.history import (AGENT_EXIT, AGENT_LOST, AGENT_REFUSED, CORRUPTED, LIFELINE, OBSERVED, OBSERVER,
                           RANK_REJECTED, SLURMD_RESTARTED)

if TYPE_CHECKING:
    from chaos.supervisor.supervisor import _Supervisor

TICK_S = 0.05
"""Select timeout: the period of hang checks, wall-clock faults and progress updates."""
HOLD_GATHER_S = 10.0
"""A fault on several ranks waits this long for all of them to be held, then lands on those that are."""
DESCENDANT_SCAN_S = 1.0


# ---- per-rank bookkeeping ------------------------------------------------------------------------------
@dataclass
class _Rank:
    rank: int
    connection: Connection
    process: TrackedProcess
    tail: HistoryTail
    held: dict[str, dict] = field(default_factory=dict)   # fault_id -> {step, phase, index, since}
    awaiting_death: bool = False


@dataclass
class _Stall:
    """A pause, straggler or partition in progress: `undo` (from the fault's action) ends it at `until_mono`,
    or with the attempt."""
    fault_id: str
    kind: str
    ranks: list[int]
    since_mono: float
    until_mono: float
    undo: Callable[[bool], dict]


@dataclass
class _FaultState:
    fault: PlannedFault
    held: dict[int, dict] = field(default_factory=dict)     # rank -> hold message
    gather_deadline: float | None = None
    landed_ranks: set[int] = field(default_factory=set)
    missed_ranks: dict[int, str] = field(default_factory=dict)
    fired: bool = False                                     # wall-clock faults


class Attempt:
    def __init__(self, supervisor: "_Supervisor", number: int, control_path: str) -> None:
        self.sup = supervisor
        self.config = supervisor.config
        self.spec = supervisor.config.launch
        self.number = number
        self.control_path = control_path
        self.directory = history.attempt_dir(supervisor.run_dir, number)
        self.table = ProcessTable()
        self.ranks: dict[int, _Rank] = {}
        self.faults = {f.id: _FaultState(f) for f in self.config.faults if f.trigger.attempt == number}
        self.selector = selectors.DefaultSelector()
        self.end: str | None = None
        self.launch_mono = 0.0
        self.last_progress = 0.0
        self._last_scan = 0.0
        self._last_report = 0.0
        self._reported_step: int | None = None
        self._exit_reported: set[int] = set()
        """id() of each process whose exit is recorded (not its pid: on a cluster two hosts may share a pid)."""
        self.observed: ObservedTriggers | None = None
        """Log-observed workloads: the follower and the faults it triggers (None: the probe holds ranks)."""
        self.cgroup: lifeline.AttemptCgroup | None = None
        self.stalls: list[_Stall] = []
        self.links: dict[int, AgentLink] = {}
        """hosts: cluster: this attempt's agents, by node."""

    # ---- lifecycle ------------------------------------------------------------------------------------
    def run(self) -> str:
        self.directory.mkdir(parents=True, exist_ok=True)
        server = self.sup.server
        assert server is not None
        server.selector = self.selector
        self.selector.register(server.listener, selectors.EVENT_READ, ("accept", None))
        self.selector.register(self.sup.interrupt.read_fd, selectors.EVENT_READ, ("interrupt", None))
        try:
            if self.spec.observation == "log":
                self._start_observing()
            self._launch()
            self._watch()
        finally:
            # Whatever happened (an exception in here included), nothing of this attempt may survive.
            teardown_started = time.monotonic()
            on_hosts = self._teardown_hosts()  # each agent its own host's ranks; then srun here
            result = teardown(self.table, self.config.restart.teardown_grace_s)
            teardown_s = time.monotonic() - teardown_started  # on a cluster, the hosts' teardowns included
            self._end_stalls(None)  # after the teardown: a straggler's cgroup is empty now, a cut link is healed
            survivors, escaped = result.survivors, []
            if self.cgroup is not None:
                # whatever left the process tree (a double fork, a setsid grandchild) is still in the cgroup
                escaped = sorted(set(self.cgroup.kill()) - set(result.sigkill) - set(result.sigterm))
                survivors = sorted({pid for pid in survivors if still_running(pid)} | set(self.cgroup.pids()))
                self.cgroup.remove()
            # the independent witness: whatever escaped the tree, the groups and the cgroup carries the token
            leaked = sweep_token_holders(f"{control.ENV_RUN_TOKEN}={self.sup.run_token}",
                                         exclude=set(self.sup.spares.pids()) if self.sup.spares else set(),
                                         table=self.table)
            survivors = sorted(set(survivors) | {item.pid for item in leaked if item.alive_after_sigkill})
            leaked_fields = [{"pid": item.pid, "command": item.command, "tied_by": item.tied_by} for item in leaked]
            for stranger in leaked.strangers:  # another user's process with the token: reported, not the job's
                self.sup.record(history.SECURITY_EVENT, attempt=self.number, **stranger.to_fields())
            for answer in on_hosts:
                survivors += answer.get("survivors") or []
                leaked_fields += [{**item, "node": answer["node"]} for item in answer.get("leaked") or []]
                for stranger in answer.get("strangers") or []:
                    self.sup.record(history.SECURITY_EVENT, attempt=self.number, node=answer.get("node"),
                                    **stranger_fields(stranger))
            self.sup.watchdog.release_all()
            if self.observed is not None:
                self._observe(final=True)  # what the ranks wrote before they died
                self.observed.close()
            self.sup.record(history.TEARDOWN, attempt=self.number, duration_s=round(teardown_s, 4),
                            grace_s=self.config.restart.teardown_grace_s, sigterm=result.sigterm,
                            sigkill=result.sigkill, survivors=survivors, cgroup_killed=escaped,
                            leaked=leaked_fields, **({"hosts": on_hosts} if self.links else {}))
            self._report_late_exits()
            if server.rejected_count:
                self.sup.record(RANK_REJECTED, attempt=self.number, rank=None, pid=None,
                                reason=f"{server.rejected_count} connection(s) to the control socket dropped before a "
                                       f"hello with this run's token: {'; '.join(server.rejected)}")
                server.rejected.clear()
                server.rejected_count = 0
            server.drop_all()
            self.selector.unregister(server.listener)
            self.selector.unregister(self.sup.interrupt.read_fd)
            server.selector = None
            self.selector.close()
            for process in self.table.all_tracked():
                process.close()
            for rank in self.ranks.values():
                rank.tail.close()
        outcome = self.end or "error"
        self._record_missed()
        self.sup.record(history.ATTEMPT_END, attempt=self.number, outcome=outcome)
        return outcome

    def _launch(self) -> None:
        port = launcher.free_port()
        self._make_cgroup()
        plan = launcher.AttemptLaunch(self.number, self.directory, port, self.control_path,
                                      self.cgroup.procs_file if self.cgroup else None,
                                      run_dir=str(self.sup.run_dir), run_token=self.sup.run_token,
                                      run_id=self.sup.run_id)
        self.launch_mono = time.monotonic()
        if self.sup.slurm is not None:
            if self.sup.slurm.cgroup is not None:  # guarded again: the last attempt's end released every guard
                self.sup.watchdog.guard_cgroup(self.sup.slurm.cgroup)
            # a node lost in the last attempt boots again: its slurmd starts and registers
            revived = self.sup.slurm.revive()
            if revived:
                self.sup.record(SLURMD_RESTARTED, attempt=self.number, nodes=revived)
            self.sup.slurm.wait_idle()
        if self.sup.agent_server is not None:
            self.table.launched = [launcher.launch_agents(self.spec, plan, self.sup.agent_server.address)]
        else:
            self.table.launched = launcher.launch(self.config.launcher, self.spec, plan, self.sup.spares,
                                                  self.sup.hosts, self.sup.slurm)
        for process in self.table.launched:  # each leads its own session: its group is its pid
            self.sup.watchdog.guard_group(process.pid, process.create_time)
        if self.sup.agent_server is not None:
            port = self._start_ranks_on_agents(plan)
        for process in self.table.launched:
            self.selector.register(process.pidfd, selectors.EVENT_READ, ("exit", process))
            if process.role == "rank":
                self.table.ranks[process.rank] = process
        self.sup.record(history.ATTEMPT_START, attempt=self.number, launcher=self.config.launcher, port=port,
                        control_socket=self.control_path,
                        processes=[{"pid": p.pid, "role": p.role, "rank": p.rank, "node": p.node, "warm": p.warm}
                                   for p in self.table.launched])
        self.sup.progress(attempt=self.number, restarts=self.number - 1, step=None, force=True)

    # ---- agents (hosts: cluster) ----------------------------------------------------------------------
    def _start_ranks_on_agents(self, plan: launcher.AttemptLaunch) -> int:
        """Waits for one agent per node (srun is starting them) and records each one's clock against ours;
        then the ranks start: launcher slurm, as a second step of the agents' job (the agents adopt each task
        at its hello); launcher torchrun, a torchrun per node started by its agent. Returns the rendezvous
        port (node 0's agent picked it on its host). Agents that do not all come within startup_timeout_s end
        the attempt as hung, like silent ranks."""
        srun = self.table.launched[0]

        def give_up() -> str | None:
            if self.sup.interrupt.requested:
                return "interrupted"
            return None if srun.alive() else "srun exited"

        links, refused = self.sup.agent_server.gather(self.spec.nodes, self.number,
                                                      self.config.restart.startup_timeout_s, give_up)
        for reason in refused:
            self.sup.record(AGENT_REFUSED, attempt=self.number, reason=reason)
        self.links = links
        for node, link in sorted(links.items()):
            info = link.info
            self.sup.record(history.AGENT_HELLO, attempt=self.number, node=node, host=info.host, pid=info.pid,
                            address=info.address, interface=info.interface, port=info.port, swept=list(info.swept),
                            mono_offset_s=round(info.mono_offset_s, 6), wall_offset_s=round(info.wall_offset_s, 6),
                            rtt_s=round(info.rtt_s, 6))
            for stranger in info.strangers:  # found by the agent's sweep before it started anything
                self.sup.record(history.SECURITY_EVENT, attempt=self.number, node=node, **stranger_fields(stranger))
            self.selector.register(link.sock, selectors.EVENT_READ, ("agent", link))
        if len(links) < self.spec.nodes:
            missing = sorted(set(range(self.spec.nodes)) - set(links))
            if self.sup.interrupt.requested:
                self.end = "interrupted"
            elif srun.alive():
                self._hang(time.monotonic() - self.launch_mono, f"no agent connected for node(s) {missing}")
            else:  # the cluster refused the step (no such partition, no allocation): no restart will do better
                raise InfrastructureError(f"srun exited before an agent connected for node(s) {missing}: "
                                          f"{_last_lines(self.directory / 'srun.out')}")
            return plan.port
        port = links[0].info.port
        agents = {node: link.info for node, link in links.items()}
        if self.config.launcher == "slurm":
            tasks = launcher.launch_cluster_tasks(self.spec, plan, agents, port)
            self.sup.watchdog.guard_group(tasks.pid, tasks.create_time)
            self.table.launched.append(tasks)
            return port
        orders = launcher.torchrun_orders(self.spec, plan, agents, port)
        for node, link in sorted(links.items()):
            try:
                answer = link.request({"type": "launch", "attempt": self.number, "ranks": orders[node]})
            except AgentLost:
                self._agent_lost(link)
                continue
            for started in answer.get("launched") or []:
                process = RemoteProcess(link, int(started["pid"]), started.get("rank"), node,
                                        role=started.get("role", "rank"))
                link.processes[process.pid] = process
                self.table.launched.append(process)
            if answer.get("error"):
                raise InfrastructureError(f"the agent on node {node} ({link.info.host}) could not start its ranks: "
                                          f"{answer['error']}")
        return port

    def _on_agent(self, link: AgentLink) -> None:
        """An agent wrote (a rank's exit, which wakes the loop through that rank's pipe) or its link broke."""
        link.pump()
        if link.lost is not None:
            self._agent_lost(link)

    def _agent_lost(self, link: AgentLink) -> None:
        """Its host is unreachable (crashed, cut off, the agent killed): the attempt ends like a crash; its
        ranks count as exited (how is unknown), and the next agent there sweeps what they may have left."""
        try:
            self.selector.unregister(link.sock)
        except (KeyError, ValueError):
            return  # already recorded
        self.sup.record(AGENT_LOST, attempt=self.number, node=link.info.node, host=link.info.host, reason=link.lost)
        if self.end is None:
            self.end = "crashed"

    def _teardown_hosts(self) -> list[dict]:
        """Each agent tears its host down (at once, all hosts together) and says what it found there."""
        if not self.links:
            return []
        answers = teardown_all(self.links, self.config.restart.teardown_grace_s)
        result = []
        for node, link in sorted(self.links.items()):
            if link.lost is None:
                try:
                    self.selector.unregister(link.sock)
                except (KeyError, ValueError):
                    pass
            link.close()
            answer = {key: value for key, value in answers[node].items() if key not in ("type", "id")}
            result.append({"node": node, "host": link.info.host, **answer})
        # the agents exit once they have answered and the ranks are gone, and so the steps end: each srun leaves
        # by itself (a SIGTERM to a srun whose step is still ending makes Slurm kill the agents mid-exit)
        deadline = time.monotonic() + self.config.restart.teardown_grace_s + 5.0
        for srun in [p for p in self.table.launched if not isinstance(p, RemoteProcess)]:
            if srun.pidfd is not None and not srun.exited:
                select.select([srun.pidfd], [], [], max(0.0, deadline - time.monotonic()))
        for process in self.table.launched:
            if isinstance(process, RemoteProcess) and not process.exited:
                process.mark_exited(time.monotonic())
        return result

    def _watch(self) -> None:
        while self.end is None:
            timeout = TICK_S
            if self.observed is not None and self.observed.next_fire_at() is not None:
                timeout = max(0.0, min(TICK_S, self.observed.next_fire_at() - time.monotonic()))
            for key, _ in self.selector.select(timeout):
                kind, subject = key.data
                if kind == "exit":
                    self._on_exit(subject)
                elif kind == "accept":
                    self._accept()
                elif kind == "message":
                    self._on_readable(subject)
                elif kind == "interrupt":
                    self.sup.interrupt.drain()
                elif kind == "observe":
                    self._observe()
                elif kind == "agent":
                    self._on_agent(subject)
            if self.sup.interrupt.requested and self.end is None:
                self.end = "interrupted"
            if self.end is None:
                self._periodic()

    # ---- events ---------------------------------------------------------------------------------------
    def _accept(self) -> None:
        server = self.sup.server
        server.expected = self.spec.world_size
        for _ in range(listening.ACCEPTS_PER_WAKEUP):  # the rest at the next wakeup: the loop has other work
            connection = server.accept()
            if connection is None:
                return
            self.selector.register(connection.sock, selectors.EVENT_READ, ("message", connection))

    def _drop_overdue(self, now: float) -> None:
        """A connection without an accepted hello past its deadline is dropped (what it sent is read first: a
        hello that came while the loop was busy still counts)."""
        server = self.sup.server
        for connection in server.overdue(now):
            self._on_readable(connection)
            if connection.rank is None and not connection.closed:
                server.reject(connection, f"no hello within {listening.HELLO_DEADLINE_S:.0f} s")

    def _on_readable(self, connection: Connection) -> None:
        for message in self.sup.server.receive(connection):
            if connection.closed:
                return  # dropped by an earlier message of the same read
            kind = message.get("type")
            if connection.rank is None:  # nothing is acted on before a hello with the run's token
                if kind == "hello" and control.token_matches(message.get("token"), self.sup.run_token):
                    self._on_hello(connection, message)
                else:
                    self.sup.server.reject(connection, "its first message was not a hello with this run's token")
            elif kind == "held":
                self._on_held(connection, message)

    def _on_hello(self, connection: Connection, message: dict) -> None:
        """A hello with the run's token (checked by the caller): the rank it names is accepted only when the
        process that holds this connection is the one we launched as that rank (or its descendant)."""
        rank, pid, attempt, host = message.get("rank"), message.get("pid"), message.get("attempt"), message.get("host")
        problem = None
        if not _is_int(attempt) or not _is_int(rank) or not _is_int(pid) or not isinstance(host, (str, type(None))):
            problem = ("a hello whose rank, pid or attempt is not an integer (or host not a string): "
                       f"{safe_files.one_line(message, 200)}")
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
            self.sup.record(RANK_REJECTED, attempt=self.number, rank=rank if _is_int(rank) else None,
                            pid=pid if _is_int(pid) else None,
                            reason=problem or "not a process of this attempt (not launched by us, nor a descendant)")
            self.sup.server.drop(connection)  # the probe sees EOF instead of a plan and exits
            return
        connection.rank = rank
        self.ranks[rank] = _Rank(rank, connection, process,
                                 HistoryTail(history.rank_history_path(self.sup.run_dir, self.number, rank)))
        self.sup.record(history.RANK_HELLO, attempt=self.number, rank=rank, pid=pid, node=process.node)
        if self.observed is not None:
            self.observed.follower.rank_started(rank, pid)
        holds = [] if self.observed is not None else [  # an unmodified trainer cannot be held
            {"fault_id": s.fault.id, "step": s.fault.trigger.step, "phase": s.fault.trigger.phase,
             "index": s.fault.trigger.index}
            for s in self.faults.values() if s.fault.trigger.phase is not None and rank in s.fault.target.ranks]
        connection.send({"type": "plan", "holds": holds})
        if len(self.ranks) == self.spec.world_size:
            self.last_progress = time.monotonic()

    def _verify_rank(self, rank: int, pid: object, host: object = None,
                     connection: Connection | None = None) -> TrackedProcess | RemoteProcess | None:
        """The rank process behind a hello, only if it is one we launched or a descendant of one. On the Unix
        socket `pid` is the kernel's (the caller refused a hello naming another); on TCP the rank's agent
        vouches that `pid` holds the connection (_verify_remote_rank)."""
        if not _is_int(pid):
            return None
        if self.config.launcher == "direct":
            launched = next(p for p in self.table.launched if p.rank == rank)
            if pid == launched.pid:
                return launched
            if self.table.launched_ancestor(pid) is not launched:
                return None
            node = launched.node
        elif self.links:
            return self._verify_remote_rank(rank, pid, host, connection)
        elif self.config.launcher == "slurm":
            # a Slurm task's parent is the node's slurmstepd, not a process of ours: it is ours when it carries
            # this run's token and attempt (only what we started through srun does), on one of our hosts
            if not environ_has(pid, f"{control.ENV_RUN_TOKEN}={self.sup.run_token}",
                               f"{control.ENV_ATTEMPT}={self.number}"):
                return None
            node = self.sup.hosts.node_of(pid) if self.sup.hosts is not None else None
        else:
            agent = self.table.launched_ancestor(pid)
            if agent is None:
                return None
            node = agent.node
        started = create_time(pid)
        process = TrackedProcess.adopt(pid, started, role="rank", rank=rank, node=node) if started else None
        if process is not None:
            if self.config.launcher == "slurm":
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
            exit_file = slurm_task.exit_status_path(self.directory, rank) if self.config.launcher == "slurm" else None
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
            self.sup.server.drop(connection)  # not what a probe sends: no value of it is used
            return
        state = self.faults.get(fault_id)
        rank = self.ranks.get(connection.rank)
        if state is None or rank is None:
            connection.send({"type": "release", "fault_id": fault_id})
            return
        now = time.monotonic()
        hold = {"step": step, "phase": phase, "index": index, "since": now}
        state.held[rank.rank] = hold
        rank.held[state.fault.id] = hold
        if state.gather_deadline is None:
            state.gather_deadline = now + HOLD_GATHER_S
        gathered = all(r in state.held or self._gone(r) for r in state.fault.target.ranks)
        # A straggler held after the gather deadline already did the fault to the others is hit at once,
        # and alone: the ranks already done must not get a second signal (nor a second fault_landed).
        window_closed = bool(state.landed_ranks or state.missed_ranks)
        pending = self._not_yet_done(state)
        if pending and (gathered or window_closed):
            self._land(state, pending)

    @staticmethod
    def _not_yet_done(state: _FaultState) -> list[int]:
        """The held ranks this fault has neither landed on nor given up on."""
        return sorted(r for r in state.held if r not in state.landed_ranks and r not in state.missed_ranks)

    def _gone(self, rank: int) -> bool:
        process = self.table.ranks.get(rank)
        return process is not None and process.exited

    def _on_exit(self, process: TrackedProcess) -> None:
        now = time.monotonic()
        self.selector.unregister(process.pidfd)
        process.mark_exited(now)
        returncode, signal_name = process.exit_status()
        self._exit_reported.add(id(process))
        if process.role == "agent":
            self.sup.record(AGENT_EXIT, attempt=self.number, node=process.node, pid=process.pid,
                            returncode=returncode, signal=signal_name)
            if returncode != 0 and self.end is None:
                self.end = "crashed"
        else:
            if self.observed is not None:
                self._observe()  # the lines it printed last (e.g. Megatron's exit message) decide its end
            rank = self.ranks.get(process.rank)
            if rank is not None:
                rank.tail.poll()
            if signal_name is None and returncode is None and process.last_signal == "SIGKILL":
                signal_name = "SIGKILL"  # a torchrun worker its agent reaped first: we know what we sent
            self.sup.record(history.RANK_EXIT, attempt=self.number, rank=process.rank, pid=process.pid,
                            returncode=returncode, signal=signal_name)
            # A torchrun worker's exit code may be unknowable (its agent reaped it): it died badly unless
            # its history says it ended training.
            ended_cleanly = returncode == 0 or (returncode is None and signal_name is None and rank is not None
                                                and rank.tail.train_end is not None)
            if not ended_cleanly:
                if process.last_signal_mono is not None:
                    latency, measured_from = now - process.last_signal_mono, "kill"
                else:
                    latency, measured_from = now - (process.exit_mono or now), "wakeup"
                self.sup.record(history.DEATH_DETECTED, attempt=self.number, rank=process.rank, pid=process.pid,
                                detect_latency_s=round(latency, 6), measured_from=measured_from,
                                signal=signal_name)
                if self.end is None:
                    self.end = "crashed"
        if self.end is None and self._all_ended():
            self._decide_clean_end()

    def _all_ended(self) -> bool:
        """Everything launched has exited. On a cluster the agents' srun ends only after teardown (they wait
        for it): there every rank (Slurm tasks known by their hellos) and every torchrun decide."""
        if not self.links:
            return all(p.exited for p in self.table.launched)
        remote = [p for p in self.table.all_tracked() if isinstance(p, RemoteProcess)]
        return len(self.table.ranks) == self.spec.world_size and all(p.exited for p in remote)

    def _decide_clean_end(self) -> None:
        rank0 = self.ranks.get(0)
        if rank0 is not None:
            rank0.tail.poll()
        reason = rank0.tail.train_end if rank0 is not None else None
        self.end = {"complete": "complete", "preempted": "preempted"}.get(reason, "crashed")

    # ---- faults ---------------------------------------------------------------------------------------
    def _land(self, state: _FaultState, ranks: list[int], held: bool = True,
              observed: dict | None = None) -> None:
        fault = state.fault
        targets = [self.ranks[r].process for r in ranks]
        extra = self._agents_taken_with(fault)
        context = nemesis.FaultContext(targets=extra + targets, checkpoint_dir=self.spec.checkpoint_dir,
                                       cgroup_name=f"chaos-{self.sup.run_id}-a{self.number:02d}-{fault.id}",
                                       hosts=self.sup.hosts, node=fault.target.node)
        try:
            result = nemesis.execute(fault.action, context)
        except Exception as error:  # noqa: BLE001 - a fault that cannot be done is recorded as missed
            for r in ranks:
                state.missed_ranks[r] = f"the {fault.action.kind} action failed: {error}"
            self._release(state, ranks)
            return
        if fault.action.kind == "corrupt":
            self.sup.record(CORRUPTED, fault_id=fault.id, attempt=self.number, **result)
        if fault.action.kind == "node_loss":
            self.sup.record(history.NODE_LOST, fault_id=fault.id, attempt=self.number, node=result["node"],
                            delivered=result["delivered"], **result["lost"])
        undo = result.pop("undo", None)
        delivered = result.get("delivered", [])
        for r in ranks:
            process = self.ranks[r].process
            if fault.action.kind != "corrupt" and process.pid not in delivered:
                state.missed_ranks[r] = "the rank was already gone when the signal was sent"
                continue
            hold = state.held.get(r)
            if hold is not None:
                step, phase, index = hold["step"], hold["phase"], hold["index"]
            elif observed is not None:
                step, phase, index = observed["step"], observed["phase"], observed["index"]
            else:
                tail = self.ranks[r].tail
                tail.poll()
                step, phase, index = tail.step, tail.phase, None
            state.landed_ranks.add(r)
            extra = {"observed": observed} if observed is not None else {}
            extra.update({key: result[key] for key in ("duration_s", "cpus", "cgroup") if key in result})
            self.sup.landed.append(self.sup.record(
                history.FAULT_LANDED, fault_id=fault.id, attempt=self.number, rank=r, pid=process.pid, step=step,
                phase=phase, index=index, action=fault.action.kind, signal=result.get("signal", fault.action.signal),
                held=held, node=process.node, **extra))
            if fault.action.signal in FATAL_BY_DEFAULT or fault.action.kind == "node_loss":
                self.ranks[r].awaiting_death = True
        if undo is not None:  # a stall: it ends after its duration
            if "cgroup" in result:
                self.sup.watchdog.guard_cgroup(Path(result["cgroup"]))  # removed (its ranks killed) if we die
            now = time.monotonic()
            self.stalls.append(_Stall(fault.id, fault.action.kind, sorted(state.landed_ranks & set(ranks)), now,
                                      now + float(fault.action.duration_s), undo))
        if fault.action.signal not in FATAL_BY_DEFAULT and fault.action.kind != "node_loss":
            self._release(state, ranks)  # a paused rank reads its release once it is continued

    def _end_stalls(self, now: float | None) -> None:
        """Ends each stall whose duration is over (SIGCONT, quota released, link healed); now=None: the attempt
        has ended, end them all (the hosts outlive the attempt: the next one must find the network whole)."""
        for stall in list(self.stalls):
            if now is not None and now < stall.until_mono:
                continue
            self.stalls.remove(stall)
            fields = stall.undo(now is not None)
            self.sup.record(history.STALL_ENDED, fault_id=stall.fault_id, attempt=self.number, kind=stall.kind,
                            ranks=stall.ranks, stalled_s=round(time.monotonic() - stall.since_mono, 3),
                            by="elapsed" if now is not None else "attempt_end", **fields)

    def _release(self, state: _FaultState, ranks: list[int]) -> None:
        for r in ranks:
            rank = self.ranks[r]
            if rank.held.pop(state.fault.id, None) is not None:
                rank.connection.send({"type": "release", "fault_id": state.fault.id})

    def _agents_taken_with(self, fault: PlannedFault) -> list[TrackedProcess]:
        """A host dying or stalling takes its torchrun agent too: SIGKILL, a pause or a node loss on a node (or
        all) also hits every agent whose ranks are all in the target."""
        host_wide = fault.action.signal == "SIGKILL" or fault.action.kind in ("pause", "straggler", "partition",
                                                                              "node_loss")
        if self.config.launcher != "torchrun" or not host_wide or fault.target.kind not in ("node", "all"):
            return []
        # Which ranks an agent runs is what their hellos proved (rendezvous may give agent n any group
        # rank), not n * ranks_per_node onwards. An agent is taken only when all of its ranks are known
        # and targeted, so a rank outside the target never dies with it.
        targets = set(fault.target.ranks)
        dying = []
        for agent in self.table.launched:
            if agent.role != "agent" or agent.exited:
                continue
            ranks = {r for r, process in self.table.ranks.items() if process.node == agent.node}
            if len(ranks) == self.spec.ranks_per_node and ranks <= targets:
                dying.append(agent)
        return dying

    def _fire_wall_clock(self, now: float) -> None:
        for state in self.faults.values():
            trigger = state.fault.trigger
            if state.fired or trigger.phase is not None or trigger.after_s is None:
                continue
            if now - self.launch_mono < trigger.after_s:
                continue
            waiting = [r for r in state.fault.target.ranks if r not in self.ranks and not self._gone(r)]
            if waiting:
                continue  # fire once every target rank said hello (a rank not started yet cannot be hit)
            state.fired = True
            alive = [r for r in state.fault.target.ranks if r in self.ranks and not self.ranks[r].process.exited]
            for r in set(state.fault.target.ranks) - set(alive):
                state.missed_ranks[r] = "the rank had exited before the wall-clock trigger"
            if alive:
                self._land(state, alive, held=False)

    def _record_missed(self) -> None:
        for state in self.faults.values():
            fault = state.fault
            if state.landed_ranks >= set(fault.target.ranks):
                continue
            never = sorted(set(fault.target.ranks) - state.landed_ranks - set(state.missed_ranks))
            reasons = [f"rank {r}: {why}" for r, why in sorted(state.missed_ranks.items())]
            if never:
                where = (f"step {fault.trigger.step} phase {fault.trigger.phase}" if fault.trigger.phase
                         else f"{fault.trigger.after_s}s after launch")
                reasons.append(f"rank(s) {never} never reached {where} in attempt {self.number} "
                               f"(the attempt ended '{self.end}')")
            self.sup.missed.append(self.sup.record(
                history.FAULT_MISSED, fault_id=fault.id, attempt=self.number,
                landed_ranks=sorted(state.landed_ranks), reason="; ".join(reasons)))

    def _make_cgroup(self) -> None:
        if not self.sup.cgroups:
            return
        self.cgroup, why_not = lifeline.create_attempt_cgroup(self.sup.run_id, self.number)  # a name: the public id
        if self.cgroup is not None:
            self.sup.watchdog.guard_cgroup(self.cgroup)
        else:
            self.sup.cgroups = False
        if self.number == 1 or self.cgroup is None:
            self.sup.record(LIFELINE, cgroup=str(self.cgroup.path) if self.cgroup else None,
                            reason=why_not or "every process of an attempt is in its cgroup",
                            fallback="process groups" if self.cgroup is None else None)

    # ---- observed faults (log-observed workloads) -----------------------------------------------------
    def _start_observing(self) -> None:
        from chaos.blackbox.follower import Follower

        spec = self.spec
        follower = Follower(self.sup.run_dir, self.number, spec.world_size, spec.checkpoint_dir, spec.tracker_name,
                            spec.follower)
        self.observed = ObservedTriggers(follower, [s.fault for s in self.faults.values()])
        self.sup.record(OBSERVER, attempt=self.number, watch_mode=follower.watch_mode,
                        fallback_reason=follower.watcher.fallback_reason)
        for fd in follower.filenos():
            self.selector.register(fd, selectors.EVENT_READ, ("observe", None))

    def _observe(self, final: bool = False) -> None:
        """Reads what the follower saw, records checkpoint-directory events, and lands the faults whose
        trigger was observed (at once, or delay_s later)."""
        assert self.observed is not None
        grew, seen = self.observed.follower.poll(final=final)
        now = time.monotonic()
        if grew:
            self.last_progress = now
        for observation in seen:
            if observation.rank is None:
                self.sup.record(OBSERVED, attempt=self.number, phase=observation.phase, step=observation.step,
                                index=observation.index, seen_mono=observation.mono, **observation.fields)
        if final:
            return
        for fault_id, evidence in self.observed.due(seen, now):
            state = self.faults[fault_id]
            alive = [r for r in state.fault.target.ranks if r in self.ranks and not self.ranks[r].process.exited]
            for r in set(state.fault.target.ranks) - set(alive):
                state.missed_ranks[r] = "the rank was not running when its observed trigger fired"
            if alive:
                self._land(state, alive, held=False, observed=evidence)

    # ---- periodic work ----------------------------------------------------------------------------------
    def _periodic(self) -> None:
        now = time.monotonic()
        self._drop_overdue(now)
        if self.observed is not None:
            self._observe()
        grew = False
        for rank in self.ranks.values():
            grew = rank.tail.poll() or grew
        if grew:
            self.last_progress = now
        for state in self.faults.values():
            if state.gather_deadline is not None and now >= state.gather_deadline:
                state.gather_deadline = None
                pending = self._not_yet_done(state)
                if pending:
                    self._land(state, pending)
        self._fire_wall_clock(now)
        self._end_stalls(now)
        if any(rank.held or rank.awaiting_death for rank in self.ranks.values()):
            self.last_progress = now  # time a rank spends held by us is not a hang
        self._refill_spares()
        restart = self.config.restart
        if len(self.ranks) < self.spec.world_size:
            if now - self.launch_mono > restart.startup_timeout_s:
                self._hang(now - self.launch_mono, f"{self.spec.world_size - len(self.ranks)} rank(s) never said hello")
        else:
            busy = sorted((r.rank, r.tail.busy) for r in self.ranks.values() if r.tail.busy and not r.process.exited)
            allowed = max(restart.hang_timeout_s, restart.startup_timeout_s) if busy else restart.hang_timeout_s
            if now - self.last_progress > allowed:
                said = f" (busy: {', '.join(f'rank {r} {what}' for r, what in busy)})" if busy else ""
                self._hang(now - self.last_progress, f"no rank's history grew{said}")
        if now - self._last_scan >= DESCENDANT_SCAN_S:
            self._last_scan = now
            self.table.record_descendants()
        self._report_progress(now)

    def _refill_spares(self) -> None:
        """Spares for the next restart: at once where the machine has the cores (WARM_CORES_PER_RANK: the
        spares import beside the attempt, and the earlier they start the likelier they are ready when a fault
        comes), else once this attempt is past its start (a rank's imports are over), so that on a small
        machine the spares' imports do not slow this attempt's start."""
        spares = self.sup.spares
        if spares is None or len(spares.spares) >= self.spec.world_size or self.number > self.config.restart.max_restarts:
            return
        # any rank: a trainer followed from its logs may print its progress from one rank only
        past_start = len(self.ranks) == self.spec.world_size and any(rank.tail.working for rank in self.ranks.values())
        if past_start or cores_for_warm_spares(self.spec.world_size):
            new = spares.refill()
            if new:
                self.sup.record(history.SPARES_STARTED, attempt=self.number, pids=new)

    def _hang(self, idle_s: float, why: str) -> None:
        self.sup.record(history.HANG_DETECTED, attempt=self.number, idle_s=round(idle_s, 3), reason=why)
        self.end = "hung"

    def _report_progress(self, now: float) -> None:
        steps = [r.tail.step for r in self.ranks.values() if r.tail.step is not None]
        step = min(steps) if steps else None
        if step != self._reported_step or now - self._last_report > 0.5:
            self._reported_step, self._last_report = step, now
            self.sup.progress(attempt=self.number, restarts=self.number - 1, step=step)

    def _report_late_exits(self) -> None:
        """rank_exit for every rank that died during teardown (their pidfds were no longer watched)."""
        for process in self.table.all_tracked():
            if id(process) in self._exit_reported:
                continue
            if process.role == "agent":
                if isinstance(process, RemoteProcess):
                    returncode, signal_name = process.exit_status()
                else:
                    returncode = process.popen.returncode if process.popen is not None else None
                    signal_name = returncode_signal(returncode)
                self._exit_reported.add(id(process))
                self.sup.record(AGENT_EXIT, attempt=self.number, node=process.node, pid=process.pid,
                                returncode=returncode, signal=signal_name, during_teardown=True)
                continue
            if process.popen is not None:
                returncode = process.popen.returncode
                signal_name = returncode_signal(returncode)
            elif isinstance(process, RemoteProcess):
                returncode, signal_name = process.exit_status()
            else:
                returncode, signal_name = None, process.last_signal if process.last_signal == "SIGKILL" else None
            self._exit_reported.add(id(process))
            self.sup.record(history.RANK_EXIT, attempt=self.number, rank=process.rank, pid=process.pid,
                            returncode=returncode, signal=signal_name, during_teardown=True)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _last_lines(path: Path, count: int = 5) -> str:
    """The end of a log, for an error message (srun says there why the cluster refused a step)."""
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return f"(no {path.name})"
    return " | ".join(lines[-count:]) or f"({path.name} is empty)"
