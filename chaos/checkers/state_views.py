"""The faulted run's committed checkpoints, read from disk and compared with the golden's fingerprints of the
same iteration (chaos.state): shared by checkpoint_state and final_state, each checkpoint read once per
analysis (CheckContext.memo)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chaos import history as h
from chaos.checkers import views
from chaos.checkers.base import CheckContext
from chaos.state.checkpoint import UnsupportedCheckpoint
from chaos.state.compare import StateComparison, compare_state
from chaos.state.files import CheckpointDamage
from chaos.state.fingerprint import Entry, read_state


@dataclass
class IterationState:
    iteration: int
    attempt: int | None
    """The attempt whose commit put this directory on disk (the latest commit of the iteration)."""
    first_of_attempt: bool
    """It was that attempt's first committed checkpoint (its first save after resuming)."""
    comparison: StateComparison | None = None
    damage: str | None = None
    """The checkpoint could not be read as what it claims to be: a finding."""
    unsupported: str | None = None
    """Readable, in a form chaos does not read: nothing judged."""
    bytes_read: int = 0
    seconds: float = 0.0

    def origin(self) -> str:
        """Where the checkpoint on disk came from: '(the first checkpoint of attempt 3)'."""
        if self.attempt is None:
            return ""
        return f" (the first checkpoint of attempt {self.attempt})" if self.first_of_attempt else \
            f" (committed in attempt {self.attempt})"

    def where(self) -> str:
        return f"iteration {self.iteration}{self.origin()}"


def commits_on_disk(ctx: CheckContext) -> dict[int, dict[str, Any]]:
    """iteration -> {attempt, first_of_attempt} of the latest commit of each iteration whose directory exists
    (a later attempt saving an iteration again replaces the directory). Memoized: every check asks."""
    if "commits_on_disk" in ctx.memo:
        return ctx.memo["commits_on_disk"]
    latest: dict[int, dict[str, Any]] = {}
    for attempt in ctx.history.attempts:
        rank = views.authoritative_rank(attempt, h.CHECKPOINT_COMMITTED)
        records = list(attempt.events(h.CHECKPOINT_COMMITTED, rank=rank)) if rank is not None else []
        for n, record in enumerate(sorted(records, key=lambda r: int(r["iteration"]))):
            latest[int(record["iteration"])] = {"attempt": attempt.index, "first_of_attempt": n == 0}
    on_disk = {i: info for i, info in sorted(latest.items())
               if (ctx.checkpoint_dir / views.iteration_dir_name(i)).is_dir()}
    ctx.memo["commits_on_disk"] = on_disk
    return on_disk


def compare_iteration(ctx: CheckContext, iteration: int) -> IterationState:
    """The run's checkpoint of `iteration` against the golden's (memoized)."""
    memo = ctx.memo.setdefault("state", {})
    if iteration in memo:
        return memo[iteration]
    info = commits_on_disk(ctx).get(iteration, {})
    state = IterationState(iteration, info.get("attempt"), bool(info.get("first_of_attempt")))
    golden = ctx.golden_checkpoints[iteration]
    sample = [key for key, spread in golden.spread.items() if isinstance(spread, float) and spread > 0]
    directory = ctx.checkpoint_dir / views.iteration_dir_name(iteration)
    try:
        result = read_state(directory, sample=sample)
    except CheckpointDamage as error:
        state.damage = str(error)
    except UnsupportedCheckpoint as error:
        state.unsupported = str(error)
    else:
        fingerprint = result.fingerprint
        state.bytes_read, state.seconds = fingerprint.bytes_read, fingerprint.seconds
        golden_entries = {key: Entry.from_dict(value) for key, value in golden.entries.items()}
        actual = {key: entry for key, entry in fingerprint.entries.items() if entry.category != "configuration"}
        state.comparison = compare_state(iteration, golden_entries, golden.spread, actual,
                                         ctx.accepted_state_differences)
    memo[iteration] = state
    return state


def first_divergence(states: list[IterationState]) -> tuple[IterationState, str] | None:
    """The earliest iteration whose state differs, and its sentence: the first differing entry (by category:
    progress, scheduler, RNG, optimizer, model), whether it still differs at every later compared iteration
    ("from iteration N on"), and where that checkpoint came from."""
    differing = [s for s in states if s.comparison is not None and s.comparison.differences]
    if not differing:
        return None
    first = differing[0]
    difference = first.comparison.differences[0]
    later = [s for s in states if s.comparison is not None and s.iteration > first.iteration]
    persists = later and all(any(d.key == difference.key for d in s.comparison.differences) for s in later)
    when = (f"from iteration {first.iteration} on" if persists else f"at iteration {first.iteration}") + first.origin()
    sentence = f"{difference.sentence()} {when}"
    others = len(first.comparison.differences) - 1
    if others:
        counts = ", ".join(f"{category} {count}" for category, count in first.comparison.by_category().items())
        sentence += f"; {others} more entr{'y differs' if others == 1 else 'ies differ'} there ({counts})"
        # the first of every other category too: a FLOPs counter first must not hide an RNG not restored
        firsts = {}
        for other in first.comparison.differences[1:]:
            if other.category != difference.category:
                firsts.setdefault(other.category, other.what)
        if firsts:
            sentence += ", first of each: " + "; ".join(firsts.values())
    return first, sentence
