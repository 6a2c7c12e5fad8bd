"""Oracle 5: the model + optimizer state at the end equals the golden's: a run can match every logged loss and
still end with different Adam moments.

Two ways to know the final state: the trainer's own hash of it (rank 0's hash of the gathered tensors, which
chaos's trainer reports through its probe), or the checkpoint the job saves at its last iteration, read from
outside and compared with the golden's fingerprints (chaos.state; how an unmodified Megatron-LM job is
judged, since it prints no hash). The hash is used where the trainer reports one and the golden's runs
agreed on it; the final checkpoint otherwise.
"""

from __future__ import annotations

from chaos import history as h
from chaos.checkers import views
from chaos.checkers.base import CheckContext, CheckResult
from chaos.checkers.checkpoint_state import notes
from chaos.checkers.state_views import commits_on_disk, compare_iteration

NAME = "final_state"


def check(ctx: CheckContext) -> CheckResult:
    if not ctx.final_state_unavailable and ctx.golden_final_state_hash:
        return _by_hash(ctx)
    return _by_final_checkpoint(ctx)


def _by_hash(ctx: CheckContext) -> CheckResult:
    final = None
    for attempt in ctx.history.attempts:
        rank = views.authoritative_rank(attempt, h.FINAL_STATE)
        if rank is not None:
            final = (attempt.index, list(attempt.events(h.FINAL_STATE, rank=rank))[-1])
    evidence: dict = {"golden": ctx.golden_final_state_hash, "by": "the trainer's state hash"}
    if final is None:
        return CheckResult(NAME, "fail", f"the run never reached the end (no final_state record; "
                                         f"train_iters={ctx.train_iters})", evidence)
    attempt, record = final
    evidence.update(attempt=attempt, actual=record.get("state_hash"), step=record.get("step"))
    if record.get("step") is not None and int(record["step"]) != ctx.train_iters:
        return CheckResult(NAME, "fail", f"final state recorded at step {record['step']}, not at train_iters="
                                         f"{ctx.train_iters} (attempt {attempt})", evidence)
    if record.get("state_hash") != ctx.golden_final_state_hash:
        return CheckResult(NAME, "fail", f"final state hash of attempt {attempt} differs from the golden: "
                                         f"golden={ctx.golden_final_state_hash}, actual={record.get('state_hash')}",
                           evidence)
    return CheckResult(NAME, "pass", f"final state hash equals the golden (attempt {attempt})", evidence)


def _by_final_checkpoint(ctx: CheckContext) -> CheckResult:
    last = ctx.train_iters
    why_no_hash = ctx.final_state_unavailable or "the golden records no final state hash (its runs disagreed on it, " \
                                                 "or it predates them)"
    if last not in ctx.golden_checkpoints:
        return CheckResult(NAME, "skip", f"{why_no_hash}; and the golden keeps no fingerprint of a checkpoint at the "
                                         f"last iteration {last} to compare instead")
    evidence: dict = {"by": f"the checkpoint of iteration {last}", "iteration": last}
    if last not in commits_on_disk(ctx):
        return CheckResult(NAME, "fail", f"the run committed no checkpoint of its last iteration {last} (the "
                                         f"uninterrupted run did): its final state is unknown", evidence)
    state = compare_iteration(ctx, last)
    evidence["attempt"] = state.attempt
    if state.damage:
        return CheckResult(NAME, "fail", f"the final checkpoint cannot be read as what it claims to be: {state.damage}",
                           evidence)
    if state.comparison is None:
        return CheckResult(NAME, "skip", f"the final checkpoint is in a form chaos does not read: {state.unsupported}",
                           evidence)
    evidence.update(state.comparison.to_dict(limit=10))
    if state.comparison.differences:
        difference = state.comparison.differences[0]
        more = len(state.comparison.differences) - 1
        return CheckResult(NAME, "fail", f"final state (the checkpoint of iteration {last}, attempt {state.attempt}) "
                                         f"differs from the golden's: {difference.sentence()}"
                                         + (f", and {more} more" if more else ""), evidence)
    return CheckResult(NAME, "pass", f"final state equals the golden's: the checkpoint of iteration {last} (attempt "
                                     f"{state.attempt}), {state.comparison.compared} entries" + notes([state]), evidence)
