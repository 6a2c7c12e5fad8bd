"""restart.by: job: what an attempt hands the next when the job restarted itself (chaos.supervisor.attempt):
the launch lives on, so its processes, cgroup, launcher output, early hellos and running stalls are carried
over instead of torn down."""

from __future__ import annotations

from dataclasses import dataclass, field

from chaos.ownership import lifeline
from chaos.ownership.processes import ProcessTable, teardown
from chaos.supervisor import in_process as in_process_restart
from chaos.supervisor.control_server import Connection
from chaos.supervisor.job_log import JobLog


@dataclass
class CarriedLaunch:
    """restart.by: job: what an attempt hands the next when the job's own launcher restarted the workers: the
    launch itself (its processes, cgroup and launcher output live on) and the hellos of the next attempt
    that came before this one ended."""
    table: ProcessTable
    cgroup: lifeline.AttemptCgroup | None
    port: int
    job_log: JobLog
    deferred: list[tuple[Connection, dict]] = field(default_factory=list)
    pending: list[Connection] = field(default_factory=list)
    """Connections that had said nothing yet when this attempt ended: a rank of the next attempt whose hello
    was still on its way (the next attempt reads it; one that never says hello is dropped at its deadline)."""
    stalls: list = field(default_factory=list)
    """Stalls of processes beside the ranks (a paused rank monitor) still running their course."""
    in_process: bool = False
    """The job restarted in-process: its ranks re-entered their training function in the same processes, so
    this attempt's rank processes are the next attempt's ranks (adopted at their new hellos), not survivors."""
    ranks: in_process_restart.CarriedRanks | None = None
    """In-process, a job followed from its logs: it says no hello, so its ranks and output files are carried
    on as they are (chaos.supervisor.in_process)."""

    def abandon(self, grace_s: float) -> None:
        """The run stopped between two of the job's attempts (an error, a full disk): nothing of the launch may
        survive it."""
        teardown(self.table, grace_s)
        if self.cgroup is not None:
            self.cgroup.kill()
            self.cgroup.remove()
        for connection in [c for c, _ in self.deferred] + self.pending:
            connection.sock.close()
        for process in self.table.all_tracked():
            process.close()
        for stall in self.stalls:
            stall.close()
        if self.ranks is not None:
            self.ranks.close()
        self.job_log.close()
