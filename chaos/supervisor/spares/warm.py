"""The launcher's seam for warm starts: a rank started without a new interpreter paying for its imports, from
a warm spare (pool.SparePool, restart.warm: true) or forked from the run's zygote (fork_server.ForkServer,
restart.warm: fork). Both answer `start_rank`; None means: start this rank cold."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Protocol

from chaos.ownership.processes import TrackedProcess


class WarmStarts(Protocol):
    started_event: str
    """The supervisor.jsonl event that records a refill (chaos.history)."""
    refusal: str | None
    """Why the last rank asked for was not started warm (None: it was, or there was nothing to start it from)."""

    def start_rank(self, env: Mapping[str, str], output: Path, status: Path, cgroup_procs: str | None,
                   rank: int, node: int) -> TrackedProcess | None:
        """Rank `rank` started warm with what a cold rank of the spec's argv would get: the environment,
        output file and cgroup; `status` is where its exit status is written when we are not its parent.
        The process says how it started (TrackedProcess.start, and fork_mono for a fork)."""
        ...

    def missing(self) -> int:
        """How many warm processes (spares, a zygote) should be started now."""
        ...

    def refill(self) -> list[int]:
        """Starts the missing ones; returns their pids."""
        ...

    def pids(self) -> list[int]:
        """The run's token holders that belong to no attempt (the token sweep leaves them alone)."""
        ...

    def close(self) -> None:
        ...
