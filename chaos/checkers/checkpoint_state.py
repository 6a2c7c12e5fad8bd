"""Oracle 5b: every checkpoint the faulted run committed holds the state the uninterrupted run saved at the
same iteration: model parameters, optimizer moments and step counts, every RNG state, the scheduler, the
iteration and the consumed samples, entry by entry (chaos.state).

The loss is one projection of the state: a resume that replays the RNG, zeroes Adam's moments or restarts the
scheduler can stay inside a loss tolerance for many steps while the state is already wrong. The rule is the
golden's measured reproducibility, whatever golden.mode says for the logged metrics (chaos.state.compare).
A checkpoint that cannot be read as what it claims to be fails with what was wrong; a committed iteration
the golden has no checkpoint of (a save on SIGTERM off the save interval) is listed as not compared.
"""

from __future__ import annotations

from chaos.checkers import views
from chaos.checkers.base import CheckContext, CheckResult
from chaos.checkers.state_views import IterationState, commits_on_disk, compare_iteration, first_divergence

NAME = "checkpoint_state"


def check(ctx: CheckContext) -> CheckResult:
    if not ctx.golden_checkpoints:
        return CheckResult(NAME, "skip", "the golden keeps no fingerprints of its checkpoints (Megatron's own golden "
                                         "files, or one recorded before chaos kept them): record one with "
                                         "`chaos golden record` to compare the state")
    commits = commits_on_disk(ctx)
    corrupted = views.corrupted_iterations(ctx.history)
    not_in_golden = [i for i in commits if i not in ctx.golden_checkpoints]
    states: list[IterationState] = [compare_iteration(ctx, i) for i in commits
                                    if i in ctx.golden_checkpoints and i not in corrupted]
    evidence: dict = {
        "compared_iterations": [s.iteration for s in states if s.comparison is not None],
        "not_in_golden": not_in_golden,
        "corrupted_by_the_tester": sorted(i for i in commits if i in corrupted),
        "iterations": [_iteration_evidence(s) for s in states],
    }
    read_bytes = sum(s.bytes_read for s in states)
    read_seconds = sum(s.seconds for s in states)
    evidence["read"] = {"bytes": read_bytes, "seconds": round(read_seconds, 3),
                        "mb_per_s": round(read_bytes / 1e6 / read_seconds, 1) if read_seconds > 0 else None}
    damaged = [s for s in states if s.damage]
    if damaged:
        first = damaged[0]
        return CheckResult(NAME, "fail", f"the checkpoint of {first.where()} cannot be read as what it claims to be: "
                                         f"{first.damage}", evidence)
    divergence = first_divergence(states)
    if divergence is not None:
        state, sentence = divergence
        evidence["first_divergence"] = {"iteration": state.iteration, "attempt": state.attempt,
                                        **state.comparison.differences[0].to_dict()}
        return CheckResult(NAME, "fail", sentence, evidence)
    compared = [s for s in states if s.comparison is not None]
    unsupported = [s for s in states if s.unsupported]
    if not compared:
        why = (f"chaos cannot read them: {unsupported[0].unsupported}" if unsupported else
               f"no committed checkpoint has a golden counterpart (committed: {sorted(commits)}, golden: "
               f"{sorted(ctx.golden_checkpoints)})" if commits else "no checkpoint was committed")
        return CheckResult(NAME, "skip", f"no checkpoint state compared: {why}", evidence)
    entries = sum(s.comparison.compared for s in compared)
    within = sum(s.comparison.within_spread for s in compared)
    rule = "bitwise" if not within else f"bitwise, {within} within the spread measured between uninterrupted runs"
    detail = (f"the state of {len(compared)} checkpoint(s) {[s.iteration for s in compared]} equals the golden's "
              f"({entries} entries; {rule})")
    return CheckResult(NAME, "pass", detail + notes(compared, not_in_golden, unsupported), evidence)


def notes(compared: list[IterationState], not_in_golden: list[int] = (), unsupported: list[IterationState] = ()) -> str:
    """What a passing comparison leaves aside, said in the detail: accepted and unjudged differences."""
    out = []
    accepted = {}
    for state in compared:
        for difference, reason in state.comparison.accepted:
            accepted.setdefault(difference.what, reason)
    if accepted:
        out.append("accepted by the scenario: " + "; ".join(f"{what} ({why})" for what, why in accepted.items()))
    if not_in_golden:
        out.append(f"not compared: {list(not_in_golden)} (the golden saved no checkpoint there)")
    varying = sum(len(s.comparison.varying) for s in compared)
    if varying:
        out.append(f"{varying} value(s) that varied between uninterrupted runs not judged")
    other = [d.key for s in compared for d in s.comparison.notes]
    if other:
        out.append(f"{len(other)} entr{'y' if len(other) == 1 else 'ies'} outside the restored state differ "
                   f"(e.g. {other[0]})")
    if unsupported:
        out.append(f"not read: {[s.iteration for s in unsupported]} ({unsupported[0].unsupported})")
    return "; " + "; ".join(out) if out else ""


def _iteration_evidence(state: IterationState) -> dict:
    out: dict = {"iteration": state.iteration, "attempt": state.attempt, "bytes_read": state.bytes_read,
                 "seconds": round(state.seconds, 3)}
    if state.damage:
        out["damage"] = state.damage
    if state.unsupported:
        out["unsupported"] = state.unsupported
    if state.comparison is not None:
        out.update(state.comparison.to_dict())
    return out
