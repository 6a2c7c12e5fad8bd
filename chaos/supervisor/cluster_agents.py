"""hosts: cluster: one attempt's host agents (chaos.agent), one per node. They dial in as srun starts them,
start the ranks on their hosts (or let a Slurm step start them), report the ranks' exits, and at the end
tear their hosts down and say what they found there. A link lost is a host lost: the attempt ends crashed.
"""

from __future__ import annotations

import select
import selectors
import time
from pathlib import Path
from typing import Callable

from chaos import history
from chaos.errors import InfrastructureError
from chaos.history import AGENT_LOST, AGENT_REFUSED
from chaos.ownership.processes import ProcessTable
from chaos.ownership.sweep import stranger_fields
from chaos.supervisor import launcher
from chaos.supervisor.attempt_context import AttemptContext
from chaos.supervisor.hosts.agents import AgentLink, AgentLost, RemoteProcess, teardown_all


class ClusterAgents:
    """`links` (this attempt's agents, by node: empty unless hosts: cluster) is filled here and read by the
    attempt and the handshake; `table` and `selector` are the attempt's. `ended(outcome)` ends the attempt
    (unless it has ended already), `hung(idle_s, why)` ends it as hung."""

    def __init__(self, context: AttemptContext, number: int, directory: Path, selector: selectors.BaseSelector,
                 table: ProcessTable, ended: Callable[[str], None], hung: Callable[[float, str], None]) -> None:
        self.ctx = context
        self.spec = context.launch
        self.number = number
        self.directory = directory
        self.selector = selector
        self.table = table
        self.ended = ended
        self.hung = hung
        self.links: dict[int, AgentLink] = {}

    def start_ranks(self, plan: launcher.AttemptLaunch, launch_mono: float) -> int:
        """Waits for one agent per node (srun is starting them) and records each one's clock against ours;
        then the ranks start: launcher slurm, as a second step of the agents' job (the agents adopt each task
        at its hello); launcher torchrun, a torchrun per node started by its agent. Returns the rendezvous
        port (node 0's agent picked it on its host). Agents that do not all come within startup_timeout_s end
        the attempt as hung, like silent ranks."""
        srun = self.table.launched[0]

        def give_up() -> str | None:
            if self.ctx.interrupt.requested:
                return "interrupted"
            return None if srun.alive() else "srun exited"

        links, refused = self.ctx.agent_server.gather(self.spec.nodes, self.number,
                                                      self.ctx.restart.startup_timeout_s, give_up)
        for reason in refused:
            self.ctx.record(AGENT_REFUSED, attempt=self.number, reason=reason)
        self.links.update(links)
        for node, link in sorted(links.items()):
            info = link.info
            self.ctx.record(history.AGENT_HELLO, attempt=self.number, node=node, host=info.host, pid=info.pid,
                            address=info.address, interface=info.interface, port=info.port, swept=list(info.swept),
                            mono_offset_s=round(info.mono_offset_s, 6), wall_offset_s=round(info.wall_offset_s, 6),
                            rtt_s=round(info.rtt_s, 6))
            for stranger in info.strangers:  # found by the agent's sweep before it started anything
                self.ctx.record(history.SECURITY_EVENT, attempt=self.number, node=node, **stranger_fields(stranger))
            self.selector.register(link.sock, selectors.EVENT_READ, ("agent", link))
        if len(links) < self.spec.nodes:
            missing = sorted(set(range(self.spec.nodes)) - set(links))
            if self.ctx.interrupt.requested:
                self.ended("interrupted")
            elif srun.alive():
                self.hung(time.monotonic() - launch_mono, f"no agent connected for node(s) {missing}")
            else:  # the cluster refused the step (no such partition, no allocation): no restart will do better
                raise InfrastructureError(f"srun exited before an agent connected for node(s) {missing}: "
                                          f"{_last_lines(self.directory / 'srun.out')}")
            return plan.port
        port = links[0].info.port
        agents = {node: link.info for node, link in links.items()}
        if self.ctx.launcher == "slurm":
            tasks = launcher.launch_cluster_tasks(self.spec, plan, agents, port)
            self.ctx.watchdog.guard_group(tasks.pid, tasks.create_time)
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

    def on_agent(self, link: AgentLink) -> None:
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
        self.ctx.record(AGENT_LOST, attempt=self.number, node=link.info.node, host=link.info.host, reason=link.lost)
        self.ended("crashed")

    def teardown_hosts(self) -> list[dict]:
        """Each agent tears its host down (at once, all hosts together) and says what it found there."""
        if not self.links:
            return []
        answers = teardown_all(self.links, self.ctx.restart.teardown_grace_s)
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
        deadline = time.monotonic() + self.ctx.restart.teardown_grace_s + 5.0
        for srun in [p for p in self.table.launched if not isinstance(p, RemoteProcess)]:
            if srun.pidfd is not None and not srun.exited:
                select.select([srun.pidfd], [], [], max(0.0, deadline - time.monotonic()))
        for process in self.table.launched:
            if isinstance(process, RemoteProcess) and not process.exited:
                process.mark_exited(time.monotonic())
        return result


def _last_lines(path: Path, count: int = 5) -> str:
    """The end of a log, for an error message (srun says there why the cluster refused a step)."""
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return f"(no {path.name})"
    return " | ".join(lines[-count:]) or f"({path.name} is empty)"
