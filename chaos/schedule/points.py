"""Where and when in a run a drawn fault can land, and the draws themselves: the candidate (step, phases) points
of a workload, a phase (and shard index) drawn among them, an exponential MTBF gap. Shared by the planner
(`random:` entries) and the soak's draws (chaos.schedule.soak_draws).

Seeded plans must not change: callers rely on the number and order of the rng calls made here.
"""

from __future__ import annotations

import random

from chaos.workloads.base import Workload


def candidate_points(workload: Workload, steps: tuple[int, int] | None = None,
                     phases: tuple[str, ...] = ()) -> dict[int, tuple[str, ...]]:
    """Step -> the phases a fault there can land in, within `steps` (inclusive; default every step) and among
    `phases` (default the workload's step phases). Save phases only count at steps that save (multiples of
    save_interval and the last step), so a planned fault never waits in vain."""
    facts, rules = workload.facts, workload.phases
    low, high = steps or (1, facts.train_iters)
    phases = phases or rules.step_phases
    points: dict[int, tuple[str, ...]] = {}
    for step in range(max(low, 1), min(high, facts.train_iters) + 1):
        saves = step % facts.save_interval == 0 or step == facts.train_iters
        allowed = tuple(p for p in phases if saves or p not in rules.save_phases)
        if allowed:
            points[step] = allowed
    return points


def mtbf_gap_s(rng: random.Random, mtbf_s: float) -> float:
    """An exponential inter-arrival time of mean mtbf_s, in milliseconds; never 0 (after_s must be > 0)."""
    return round(rng.expovariate(1.0 / mtbf_s), 3) or 0.001


def draw_phase(rng: random.Random, phases: tuple[str, ...], workload: Workload) -> tuple[str, int | None]:
    """One of `phases`, and for checkpoint.shard which shard file (1-based) the fault waits for (the first
    when the workload cannot say how many it writes)."""
    phase = rng.choice(phases)
    index = None
    if phase == "checkpoint.shard":
        limit = workload.phases.index_limit(phase)
        index = rng.randint(1, limit[0]) if limit and limit[0] else 1
    return phase, index
