"""One attempt: launch -> watch -> inject -> detect death or hang -> tear down every survivor -> decide.

One `selectors` loop per attempt watches everything at once: a pidfd per process (readable the instant it
exits, so a death is known without polling; for a rank on another host, a pipe its agent's exit report
wakes), the control socket (hellos and holds from the probes), the agents' links and a self-pipe woken by
Ctrl-C / SIGTERM. A short select timeout drives the periodic work: reading the ranks' history tails
(progress, hang detection, the step/phase a wall-clock fault lands at) and wall-clock faults.

The attempt sees its run only through its AttemptContext (chaos.supervisor.attempt_context). Its parts:
this loop (exits, hangs, the end decided, teardown), the rank handshake (chaos.supervisor.ranks), the fault
landing (chaos.supervisor.landing) and, on a cluster, the host agents (chaos.supervisor.cluster_agents).
"""

from __future__ import annotations

import selectors
import time

from chaos import control
from chaos import history
from chaos.plan import cores_for_warm_spares
from chaos.ownership import lifeline
from chaos.supervisor import launcher
from chaos.supervisor.attempt_context import AttemptContext
from chaos.supervisor import in_process as in_process_restart
from chaos.supervisor.carried_launch import CarriedLaunch
from chaos.supervisor.cluster_agents import ClusterAgents
from chaos.supervisor.control_server import Connection
from chaos.supervisor.job_log import JobLog
from chaos.supervisor.hosts.agents import RemoteProcess
from chaos.supervisor.landing import FaultLanding
from chaos.supervisor.observed import ObservedTriggers
from chaos.supervisor.ranks import Rank, RankHandshake
from chaos.ownership.processes import (ProcessTable, TrackedProcess, pidfd_exited, returncode_signal, still_running,
                                      teardown)
from chaos.ownership.sweep import stranger_fields, sweep_token_holders
from chaos.history import AGENT_EXIT, JOB_RECOVERY, LIFELINE, OBSERVED, OBSERVER, RANK_REJECTED, SLURMD_RESTARTED

TICK_S = 0.05
"""Select timeout: the period of hang checks, wall-clock faults and progress updates."""
DESCENDANT_SCAN_S = 1.0


def launched_fields(process) -> dict:
    """A launched process as attempt_start records it (chaos.history.ATTEMPT_START)."""
    fields = {"pid": process.pid, "role": process.role, "rank": process.rank, "node": process.node,
              "warm": process.warm, "start": process.start}
    if process.fork_mono is not None:
        fields["fork_mono"] = process.fork_mono
    if process.warm_refusal is not None:
        fields["warm_refusal"] = process.warm_refusal
    return fields


class Attempt:
    def __init__(self, context: AttemptContext, number: int, carried: CarriedLaunch | None = None) -> None:
        self.ctx = context
        self.spec = context.launch
        self.number = number
        self.directory = history.attempt_dir(context.run_dir, number)
        self.by_job = context.restart.by == "job"
        self.carried = carried
        """restart.by: job, after the first attempt: the launch this attempt watches instead of making one."""
        self.carried_on: CarriedLaunch | None = None
        """restart.by: job: set when the job restarted itself and the next attempt takes the launch over."""
        self.deferred: list[tuple[Connection, dict]] = []
        self.job_log: JobLog | None = carried.job_log if carried is not None else None
        self.port = carried.port if carried is not None else 0
        self.table = carried.table if carried is not None else ProcessTable()
        self.table.ranks = {}  # the ranks are each attempt's own (the launched agents are the launch's)
        self.ranks: dict[int, Rank] = {}
        """The ranks whose hello was accepted (the handshake fills it)."""
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
        self.reentry_seen = False
        """restart.by: job, a job followed from its logs that restarts in-process: its output said every rank
        re-entered its training function (the next attempt begins there, in the same processes)."""
        self.cgroup: lifeline.AttemptCgroup | None = carried.cgroup if carried is not None else None
        self.landing = FaultLanding(context, number, self.ranks, self.table)
        self.agents = ClusterAgents(context, number, self.directory, self.selector, self.table,
                                    ended=self._end_unless_ended, hung=self._hang)
        """hosts: cluster: this attempt's agents (agents.links, by node)."""
        self.handshake = RankHandshake(context, number, self.directory, self.selector, self.table, self.ranks,
                                       self.agents.links, accepted=self._rank_accepted, held=self.landing.hold,
                                       next_attempt=self._next_attempt_hello if self.by_job else None)

    # ---- lifecycle ------------------------------------------------------------------------------------
    def run(self) -> str:
        self.directory.mkdir(parents=True, exist_ok=True)
        server = self.ctx.server
        server.selector = self.selector
        self.selector.register(server.listener, selectors.EVENT_READ, ("accept", None))
        self.selector.register(self.ctx.interrupt.read_fd, selectors.EVENT_READ, ("interrupt", None))
        try:
            if self.spec.observation == "log":
                self._start_observing()
            if self.carried is not None:
                self._take_over(self.carried)
            else:
                self._launch()
            self._watch()
        finally:
            if self._job_goes_on():
                self._hand_over()
            else:
                self._record_reentries_spent()
                self._teardown()
        outcome = self.end or "error"
        self.landing.record_missed(self.end)
        self.ctx.record(history.ATTEMPT_END, attempt=self.number, outcome=outcome)
        return outcome

    def _teardown(self) -> None:
        """Whatever happened (an exception in run() included), nothing of this attempt may survive."""
        server = self.ctx.server
        teardown_started = time.monotonic()
        on_hosts = self.agents.teardown_hosts()  # each agent its own host's ranks; then srun here
        result = teardown(self.table, self.ctx.restart.teardown_grace_s)
        teardown_s = time.monotonic() - teardown_started  # on a cluster, the hosts' teardowns included
        self.landing.end_stalls(None)  # after the teardown: a straggler's cgroup is empty now, a cut link is healed
        survivors, escaped = result.survivors, []
        if self.cgroup is not None:
            # whatever left the process tree (a double fork, a setsid grandchild) is still in the cgroup
            escaped = sorted(set(self.cgroup.kill()) - set(result.sigkill) - set(result.sigterm))
            survivors = sorted({pid for pid in survivors if still_running(pid)} | set(self.cgroup.pids()))
            self.cgroup.remove()
        # the independent witness: whatever escaped the tree, the groups and the cgroup carries the token
        leaked = sweep_token_holders(f"{control.ENV_RUN_TOKEN}={self.ctx.run_token}",
                                     exclude=set(self.ctx.warm.pids()) if self.ctx.warm else set(),
                                     table=self.table)
        survivors = sorted(set(survivors) | {item.pid for item in leaked if item.alive_after_sigkill})
        leaked_fields = [{"pid": item.pid, "command": item.command, "tied_by": item.tied_by} for item in leaked]
        for stranger in leaked.strangers:  # another user's process with the token: reported, not the job's
            self.ctx.record(history.SECURITY_EVENT, attempt=self.number, **stranger.to_fields())
        for answer in on_hosts:
            survivors += answer.get("survivors") or []
            leaked_fields += [{**item, "node": answer["node"]} for item in answer.get("leaked") or []]
            for stranger in answer.get("strangers") or []:
                self.ctx.record(history.SECURITY_EVENT, attempt=self.number, node=answer.get("node"),
                                **stranger_fields(stranger))
        self.ctx.watchdog.release_all()
        if self.observed is not None:
            self._observe(final=True)  # what the ranks wrote before they died
            self.observed.close()
        self.ctx.record(history.TEARDOWN, attempt=self.number, duration_s=round(teardown_s, 4),
                        grace_s=self.ctx.restart.teardown_grace_s, sigterm=result.sigterm,
                        sigkill=result.sigkill, survivors=survivors, cgroup_killed=escaped,
                        leaked=leaked_fields, **({"hosts": on_hosts} if self.agents.links else {}))
        self._report_late_exits()
        if server.rejected_count:
            self.ctx.record(RANK_REJECTED, attempt=self.number, rank=None, pid=None,
                            reason=f"{server.rejected_count} connection(s) to the control socket dropped before a "
                                   f"hello with this run's token: {'; '.join(server.rejected)}")
            server.rejected.clear()
            server.rejected_count = 0
        server.drop_all()
        self.selector.unregister(server.listener)
        self.selector.unregister(self.ctx.interrupt.read_fd)
        server.selector = None
        self.selector.close()
        for process in self.table.all_tracked():
            process.close()
        for rank in self.ranks.values():
            rank.tail.close()
        if self.job_log is not None:
            self.job_log.close()

    # ---- restart.by: job ----------------------------------------------------------------------------------
    def _job_goes_on(self) -> bool:
        """The job's launcher restarted the workers (a hello of the next attempt came), the launch is alive
        and a next attempt may run: it takes the launch over instead of this attempt tearing it down."""
        return (self.by_job and (bool(self.deferred) or self.reentry_seen) and self.end == "crashed"
                and not self.ctx.interrupt.requested and self.number <= self.ctx.restart.max_restarts
                and any(not p.exited for p in self.table.launched))

    def _record_reentries_spent(self) -> None:
        """The job re-entered in-process once more than restart.max_restarts allows: chaos stops it here (a job
        may bound its re-entries by nothing, Megatron-LM's wrapper does not), and the record says why it ended."""
        if (self.by_job and self.end == "crashed" and self.number > self.ctx.restart.max_restarts
                and self._reentered_in_process()):
            self.ctx.record(history.REENTRIES_SPENT, attempt=self.number, max_restarts=self.ctx.restart.max_restarts)

    def _next_attempt_hello(self, connection: Connection, message: dict) -> None:
        """A hello of attempt number + 1: the job's launcher has stopped this attempt's workers and started
        new ones. This attempt ends; the next replays the hello."""
        try:
            self.selector.unregister(connection.sock)
        except (KeyError, ValueError):
            pass
        self.deferred.append((connection, message))
        if self.end is None:
            self.end = "crashed"

    def _hand_over(self) -> None:
        """The job's own teardown of this attempt is over (its launcher stopped every worker before it started
        the next ones): recorded as this attempt's teardown, by the job, with any worker of it still running
        as a survivor; unless the job restarted in-process, where its running workers are the next attempt's
        (`carried`). The launch, its cgroup and the next attempt's connections are handed on."""
        server = self.ctx.server
        stalls = self.landing.carry_stalls()
        in_process = self._reentered_in_process()
        from_logs = in_process and self.reentry_seen  # no hello will come: the ranks are carried on as they are
        survivors, carried, exits = [], [], []
        for process in list(self.table.ranks.values()):
            if not process.exited and pidfd_exited(process.pidfd):
                process.mark_exited(time.monotonic())
            if process.exited:
                exits.append(process.exit_mono)
            elif still_running(process.pid):
                (carried if in_process else survivors).append(process.pid)
        self._report_late_exits(ranks_only=True)
        exits = [mono for mono in exits if mono is not None]
        self.ctx.record(history.TEARDOWN, attempt=self.number, by="job",
                        duration_s=round(max(exits) - min(exits), 4) if exits else 0.0,
                        grace_s=None, sigterm=[], sigkill=[], survivors=survivors, cgroup_killed=[], leaked=[],
                        **({"in_process": True, "carried": carried} if in_process else {}))
        carried_ranks = None
        if self.observed is not None:
            if from_logs:  # the same processes write on into the same files: nothing is flushed, the rest is next
                carried_ranks = in_process_restart.carry(self.observed.follower, self.ranks, carried)
            else:
                self._observe(final=True)
            self.observed.close()
        keep = {id(connection) for connection, _ in self.deferred}
        pending = []
        for connection in list(server.connections.values()):
            if id(connection) in keep:
                continue
            if connection.rank is None and not connection.closed:
                pending.append(connection)  # the next attempt's rank, its hello not read yet
            else:
                server.drop(connection)
        self.selector.unregister(server.listener)
        self.selector.unregister(self.ctx.interrupt.read_fd)
        server.selector = None
        self.selector.close()  # the launch's pidfds stay open: the next attempt watches them
        keep_open = {id(p) for p in self.table.launched}
        if carried_ranks is not None:  # their pidfds, opened at their first hello, are the next attempt's watch
            keep_open |= {id(rank.process) for rank in carried_ranks.ranks.values()}
        for process in self.table.ranks.values():
            if id(process) not in keep_open:
                process.close()
        for rank in self.ranks.values():
            rank.tail.close()
        assert self.job_log is not None
        self.carried_on = CarriedLaunch(self.table, self.cgroup, self.port, self.job_log, self.deferred, pending,
                                        stalls, in_process=in_process, ranks=carried_ranks)

    def _reentered_in_process(self) -> bool:
        return in_process_restart.reentered(self.spec, self.table, self.deferred,
                                            self.observed.follower if self.observed is not None else None)

    def _take_over(self, carried: CarriedLaunch) -> None:
        """The launch the previous attempt handed on: its processes watched again, the hellos that came early
        taken in."""
        self.launch_mono = time.monotonic()
        self.landing.stalls.extend(carried.stalls)
        for process in self.table.launched:
            if not process.exited:
                self.selector.register(process.pidfd, selectors.EVENT_READ, ("exit", process))
        self.ctx.record(history.ATTEMPT_START, attempt=self.number, launcher=self.ctx.launcher, port=carried.port,
                        control_socket=self.ctx.control_path, by="job",
                        **({"in_process": True} if carried.in_process else {}),
                        processes=[{"pid": p.pid, "role": p.role, "rank": p.rank, "node": p.node, "warm": p.warm,
                                    "carried": True} for p in self.table.launched])
        self.ctx.progress(attempt=self.number, restarts=self.number - 1, step=None, force=True)
        if carried.ranks is not None:
            # no hello will come from a log-followed job's re-entered ranks: they are this attempt's as they are
            for rank, pid in in_process_restart.adopt(carried.ranks, self.selector, self.table, self.ranks,
                                                      self.ctx.run_dir, self.number):
                self.ctx.record(history.RANK_HELLO, attempt=self.number, rank=rank.rank, pid=pid,
                                node=rank.process.node, carried=True)
                self._rank_accepted(rank, pid)
        for connection, message in carried.deferred:
            self.handshake.replay(connection, message)
        for connection in carried.pending:
            self.selector.register(connection.sock, selectors.EVENT_READ, ("message", connection))
            self.handshake.on_readable(connection)  # what came while no attempt was reading

    def _poll_job_log(self, now: float) -> None:
        if self.job_log is None:
            return
        for line in self.job_log.poll(now):
            self.last_progress = now  # the job is busy with its own recovery: not a hang
            self.ctx.record(JOB_RECOVERY, attempt=self.number, node=line.node, kind=line.kind, line=line.line,
                            seen_mono=line.mono)

    def _launch(self) -> None:
        port = self.port = launcher.free_port()
        self._make_cgroup()
        restart = self.ctx.restart
        plan = launcher.AttemptLaunch(self.number, self.directory, port, self.ctx.control_path,
                                      self.cgroup.procs_file if self.cgroup else None,
                                      run_dir=str(self.ctx.run_dir), run_token=self.ctx.run_token,
                                      run_id=self.ctx.run_id,
                                      job_restarts=self._job_restarts(),
                                      elastic=self.ctx.launcher if self.ctx.launcher in launcher.ELASTIC else "torchrun",
                                      launcher_args=self.ctx.launcher_args,
                                      # ft_launcher binds its rank monitors' sockets in TMPDIR: in the run dir
                                      scratch_dir=(self.ctx.server.short_dir("launcher-tmp", room=36)
                                                   if self.ctx.launcher == "ft_launcher" else ""))
        if self.by_job:
            # the job's later attempts write their histories there (chaos.control.rank_attempt): made now, by us
            for number in range(self.number + 1, restart.max_restarts + 2):
                history.attempt_dir(self.ctx.run_dir, number).mkdir(parents=True, exist_ok=True)
            self.job_log = JobLog({node: self.directory / f"agent-{node}.out" for node in range(self.spec.nodes)})
        self.launch_mono = time.monotonic()
        if self.ctx.slurm is not None:
            if self.ctx.slurm.cgroup is not None:  # guarded again: the last attempt's end released every guard
                self.ctx.watchdog.guard_cgroup(self.ctx.slurm.cgroup)
            # a node lost in the last attempt boots again: its slurmd starts and registers
            revived = self.ctx.slurm.revive()
            if revived:
                self.ctx.record(SLURMD_RESTARTED, attempt=self.number, nodes=revived)
            self.ctx.slurm.wait_idle()
        if self.ctx.agent_server is not None:
            self.table.launched = [launcher.launch_agents(self.spec, plan, self.ctx.agent_server.address)]
        else:
            self.table.launched = launcher.launch(self.ctx.launcher, self.spec, plan, self.ctx.warm,
                                                  self.ctx.hosts, self.ctx.slurm)
        for process in self.table.launched:  # each leads its own session: its group is its pid
            self.ctx.watchdog.guard_group(process.pid, process.create_time)
        if self.ctx.agent_server is not None:
            port = self.agents.start_ranks(plan, self.launch_mono)
        for process in self.table.launched:
            self.selector.register(process.pidfd, selectors.EVENT_READ, ("exit", process))
            if process.role == "rank":
                self.table.ranks[process.rank] = process
        self.ctx.record(history.ATTEMPT_START, attempt=self.number, launcher=self.ctx.launcher, port=port,
                        control_socket=self.ctx.control_path,
                        processes=[launched_fields(p) for p in self.table.launched])
        self.ctx.progress(attempt=self.number, restarts=self.number - 1, step=None, force=True)

    def _job_restarts(self) -> int | None:
        """The launcher's --max-restarts under restart.by: job (None: chaos restarts, the launcher never does).
        A job that restarts in-process is the only layer that restarts: restart.max_restarts is its budget
        and the launcher's is 0 (the scenario reader refuses the two layers nested)."""
        if not self.by_job:
            return None
        return 0 if self.spec.in_process else self.ctx.restart.max_restarts

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
                    self.handshake.accept()
                elif kind == "message":
                    self.handshake.on_readable(subject)
                elif kind == "interrupt":
                    self.ctx.interrupt.drain()
                elif kind == "observe":
                    self._observe()
                elif kind == "agent":
                    self.agents.on_agent(subject)
            if self.ctx.interrupt.requested and self.end is None:
                self.end = "interrupted"
            if self.end is None:
                self._periodic()

    # ---- exits ----------------------------------------------------------------------------------------
    def _on_exit(self, process: TrackedProcess) -> None:
        now = time.monotonic()
        self.selector.unregister(process.pidfd)
        process.mark_exited(now)
        returncode, signal_name = process.exit_status()
        self._exit_reported.add(id(process))
        if process.role == "agent":
            self.ctx.record(AGENT_EXIT, attempt=self.number, node=process.node, pid=process.pid,
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
            self.ctx.record(history.RANK_EXIT, attempt=self.number, rank=process.rank, pid=process.pid,
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
                self.ctx.record(history.DEATH_DETECTED, attempt=self.number, rank=process.rank, pid=process.pid,
                                detect_latency_s=round(latency, 6), measured_from=measured_from,
                                signal=signal_name)
                if self.end is None and not self.by_job:  # by: job, the job's launcher decides what follows
                    self.end = "crashed"
        if self.end is None and self._all_ended():
            self._decide_clean_end()

    def _all_ended(self) -> bool:
        """Everything launched has exited. On a cluster the agents' srun ends only after teardown (they wait
        for it): there every rank (Slurm tasks known by their hellos) and every torchrun decide."""
        if not self.agents.links:
            return all(p.exited for p in self.table.launched)
        remote = [p for p in self.table.all_tracked() if isinstance(p, RemoteProcess)]
        return len(self.table.ranks) == self.spec.world_size and all(p.exited for p in remote)

    def _decide_clean_end(self) -> None:
        rank0 = self.ranks.get(0)
        if rank0 is not None:
            rank0.tail.poll()
        reason = rank0.tail.train_end if rank0 is not None else None
        self.end = {"complete": "complete", "preempted": "preempted"}.get(reason, "crashed")

    # ---- the attempt's cgroup ------------------------------------------------------------------------
    def _make_cgroup(self) -> None:
        if not self.ctx.cgroups:
            return
        self.cgroup, why_not = lifeline.create_attempt_cgroup(self.ctx.run_id, self.number)  # a name: the public id
        if self.cgroup is not None:
            self.ctx.watchdog.guard_cgroup(self.cgroup)
        else:
            self.ctx.cgroups_unavailable()
        if self.number == 1 or self.cgroup is None:
            self.ctx.record(LIFELINE, cgroup=str(self.cgroup.path) if self.cgroup else None,
                            reason=why_not or "every process of an attempt is in its cgroup",
                            fallback="process groups" if self.cgroup is None else None)

    # ---- observed faults (log-observed workloads) -----------------------------------------------------
    def _start_observing(self) -> None:
        from chaos.blackbox.follower import Follower

        spec = self.spec
        carried = self.carried.ranks if self.carried is not None else None
        follower = Follower(self.ctx.run_dir, self.number, spec.world_size, spec.checkpoint_dir, spec.tracker_name,
                            spec.follower, outputs=carried.outputs if carried is not None else None)
        self.observed = ObservedTriggers(follower, [s.fault for s in self.landing.faults.values()])
        self.ctx.record(OBSERVER, attempt=self.number, watch_mode=follower.watch_mode,
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
                self.ctx.record(OBSERVED, attempt=self.number, phase=observation.phase, step=observation.step,
                                index=observation.index, seen_mono=observation.mono, **observation.fields)
        if final:
            return
        if self.by_job and self.spec.in_process and self.end is None and self.observed.follower.job_reentered:
            self.reentry_seen = True  # every rank re-entered its training function: the next attempt begins
            self.end = "crashed"
        for fault_id, evidence in self.observed.due(seen, now):
            self.landing.land_observed(fault_id, evidence)

    # ---- periodic work ----------------------------------------------------------------------------------
    def _periodic(self) -> None:
        now = time.monotonic()
        self.handshake.drop_overdue(now)
        if self.observed is not None:
            self._observe()
        grew = False
        for rank in self.ranks.values():
            grew = rank.tail.poll() or grew
        if grew:
            self.last_progress = now
        self._poll_job_log(now)
        self.landing.land_gathered(now)
        self.landing.fire_wall_clock(now, self.launch_mono)
        self.landing.end_stalls(now)
        hang_s = self.ctx.restart.hang_timeout_s
        if any(rank.held or (rank.awaiting_death_since is not None and now - rank.awaiting_death_since < hang_s)
               for rank in self.ranks.values()):
            self.last_progress = now  # time a rank spends held by us, or dying of our fault, is not a hang
        self._refill_spares()
        restart = self.ctx.restart
        if len(self.ranks) < self.spec.world_size:
            if now - self.launch_mono > restart.startup_timeout_s:
                self._hang(now - self.launch_mono, f"{self.spec.world_size - len(self.ranks)} rank(s) never said hello")
        else:
            busy = sorted((r.rank, r.tail.busy) for r in self.ranks.values() if r.tail.busy and not r.process.exited)
            # by: job, once every worker of this attempt is gone the job's launcher is starting new ones
            restarting = self.by_job and all(r.process.exited for r in self.ranks.values())
            allowed = (max(restart.hang_timeout_s, restart.startup_timeout_s) if busy or restarting
                       else restart.hang_timeout_s)
            if now - self.last_progress > allowed:
                said = f" (busy: {', '.join(f'rank {r} {what}' for r, what in busy)})" if busy else ""
                self._hang(now - self.last_progress, f"no rank's history grew{said}")
        if now - self._last_scan >= DESCENDANT_SCAN_S:
            self._last_scan = now
            self.table.record_descendants()
        self._report_progress(now)

    def _refill_spares(self) -> None:
        """Warm starts for the next attempt (a zygote in place of one that died, spares for the next restart):
        at once where the machine has the cores (WARM_CORES_PER_RANK: they import beside the attempt, and the
        earlier they start the likelier they are ready when a fault comes), else once this attempt is past its
        start (a rank's imports are over), so that on a small machine their imports do not slow this
        attempt's start."""
        warm = self.ctx.warm
        if warm is None or not warm.missing() or self.number > self.ctx.restart.max_restarts:
            return
        # any rank: a trainer followed from its logs may print its progress from one rank only
        past_start = len(self.ranks) == self.spec.world_size and any(rank.tail.working for rank in self.ranks.values())
        if past_start or cores_for_warm_spares(self.spec.world_size):
            new = warm.refill()
            if new:
                self.ctx.record(warm.started_event, attempt=self.number, pids=new)

    # ---- called back by the parts ---------------------------------------------------------------------
    def _rank_accepted(self, rank: Rank, pid: int) -> list[dict]:
        """The handshake accepted a rank's hello: the holds of its plan (an unmodified trainer, followed from its
        logs, cannot be held). With the last rank's hello the hang clock starts."""
        if self.observed is not None:
            self.observed.follower.rank_started(rank.rank, pid)
            holds: list[dict] = []
        else:
            holds = self.landing.holds_for(rank.rank)
        if len(self.ranks) == self.spec.world_size:
            self.last_progress = time.monotonic()
        return holds

    def _end_unless_ended(self, outcome: str) -> None:
        """An agent lost, or the agents' gathering interrupted: the attempt ends so unless it has already."""
        if self.end is None:
            self.end = outcome

    # ---- hangs and progress ----------------------------------------------------------------------------
    def _hang(self, idle_s: float, why: str) -> None:
        self.ctx.record(history.HANG_DETECTED, attempt=self.number, idle_s=round(idle_s, 3), reason=why)
        self.end = "hung"

    def _report_progress(self, now: float) -> None:
        steps = [r.tail.step for r in self.ranks.values() if r.tail.step is not None]
        step = min(steps) if steps else None
        if step != self._reported_step or now - self._last_report > 0.5:
            self._reported_step, self._last_report = step, now
            self.ctx.progress(attempt=self.number, restarts=self.number - 1, step=step)

    def _report_late_exits(self, ranks_only: bool = False) -> None:
        """rank_exit for every rank that died during teardown (their pidfds were no longer watched)."""
        for process in self.table.all_tracked():
            if id(process) in self._exit_reported or (ranks_only and (process.role != "rank" or not process.exited)):
                continue
            if process.role == "agent":
                if isinstance(process, RemoteProcess):
                    returncode, signal_name = process.exit_status()
                else:
                    returncode = process.popen.returncode if process.popen is not None else None
                    signal_name = returncode_signal(returncode)
                self._exit_reported.add(id(process))
                self.ctx.record(AGENT_EXIT, attempt=self.number, node=process.node, pid=process.pid,
                                returncode=returncode, signal=signal_name, during_teardown=True)
                continue
            if process.popen is not None:
                returncode = process.popen.returncode
                signal_name = returncode_signal(returncode)
            elif isinstance(process, RemoteProcess) or process.status_file is not None:
                returncode, signal_name = process.exit_status()  # an agent's, or the zygote's record
            else:
                returncode, signal_name = None, process.last_signal if process.last_signal == "SIGKILL" else None
            self._exit_reported.add(id(process))
            self.ctx.record(history.RANK_EXIT, attempt=self.number, rank=process.rank, pid=process.pid,
                            returncode=returncode, signal=signal_name, during_teardown=True)
