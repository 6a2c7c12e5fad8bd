"""restart.by: job for a job that restarts in-process (NVIDIA's wrapper re-entering the training function in the same
processes): how one attempt sees the re-entry and hands its ranks on to the next.

Two ways of seeing a re-entry, one hand-over (carried_launch.CarriedLaunch with in_process set):
- a trainer that calls chaos's probe (the gpt3 workload's inprocess_restarts) says hello again from the same pid as
  the next attempt (chaos.probe.reenter): the next attempt adopts each rank at that hello, as at any other;
- an unmodified trainer followed from its logs (kind: megatron_lm with --inprocess-restart) tells chaos nothing:
  no exec, no hello, same pid, the launcher's restart count unchanged. Its ranks' output says it (the wrapper's
  re-entry line in every rank, chaos.blackbox.follower), so the next attempt takes the ranks over as they are
  (CarriedRanks): the same processes, already verified by the kernel at their first hello and watched through the
  pidfds opened then, and the same output files, read on from where this attempt stopped.

A re-entry is a restart like any other, so restart.max_restarts bounds it: a job whose re-entries fail at once for
ever (Megatron-LM's wrapper sets no bound of its own) is stopped by chaos there, never left to spin.
"""

from __future__ import annotations

import selectors
from dataclasses import dataclass
from pathlib import Path

from chaos import history
from chaos.blackbox.follower import CarriedOutputs, Follower
from chaos.ownership.processes import ProcessTable, pidfd_exited
from chaos.supervisor.control_server import Connection
from chaos.supervisor.history_tail import HistoryTail
from chaos.supervisor.ranks import Rank
from chaos.workloads.base import LaunchSpec


@dataclass
class CarriedRanks:
    """A log-followed job's in-process re-entry, handed on beside the launch: its ranks (process and first
    connection, by rank) and their output files as far as they were read."""

    ranks: dict[int, Rank]
    outputs: CarriedOutputs

    def close(self) -> None:
        """The run stopped between two attempts: the pidfds and files are let go (the launch's teardown kills)."""
        self.outputs.close()
        for rank in self.ranks.values():
            rank.process.close()


def reentered(spec: LaunchSpec, table: ProcessTable, deferred: list[tuple[Connection, dict]],
              follower: Follower | None) -> bool:
    """Whether the job restarted in-process: its workload re-enters its training function after a failure
    (LaunchSpec.in_process) and either its ranks' output says every rank re-entered (a log-followed trainer), or a
    hello of the next attempt came from a process that is still one of this attempt's ranks (the kernel's word on
    who connected, and the rank's pidfd on it being the same process). A hello of the next attempt from a new
    process is a launcher's restart."""
    if not spec.in_process:
        return False
    if follower is not None and follower.job_reentered:
        return True
    running = {p.pid for p in table.ranks.values() if not p.exited and not pidfd_exited(p.pidfd)}
    return any(connection.peer_pid in running for connection, _ in deferred)


def carry(follower: Follower, ranks: dict[int, Rank], carried_pids: list[int]) -> CarriedRanks:
    """What the next attempt takes over: the ranks still running (`carried_pids`) and every output file, where
    this attempt's follower stopped reading it (its lines past a rank's re-entry held for the next)."""
    return CarriedRanks({number: rank for number, rank in ranks.items() if rank.process.pid in carried_pids},
                        follower.carry_outputs())


def adopt(carried: CarriedRanks, selector: selectors.BaseSelector, table: ProcessTable, ranks: dict[int, Rank],
          run_dir: Path, number: int) -> list[tuple[Rank, int]]:
    """The carried ranks as attempt `number`'s: watched by its selector (a death is seen at once), in its process
    table, each with a history tail of this attempt's file (the follower writes it). [(rank, pid)], in rank order,
    for the attempt to take in as it takes in an accepted hello."""
    adopted = []
    for number_of_rank in sorted(carried.ranks):
        old = carried.ranks[number_of_rank]
        process = old.process
        selector.register(process.pidfd, selectors.EVENT_READ, ("exit", process))
        table.ranks[number_of_rank] = process
        rank = Rank(number_of_rank, old.connection, process,
                    HistoryTail(history.rank_history_path(run_dir, number, number_of_rank)))
        ranks[number_of_rank] = rank
        adopted.append((rank, process.pid))
    return adopted
