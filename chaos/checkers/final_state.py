"""Oracle 5: the model + optimizer state at the end (rank 0's hash of the gathered tensors) equals the
golden's: a run can match every logged loss and still end with different Adam moments."""

from __future__ import annotations

from chaos import history as h
from chaos.checkers import views
from chaos.checkers.base import CheckContext, CheckResult

NAME = "final_state"


def check(ctx: CheckContext) -> CheckResult:
    if ctx.final_state_unavailable:
        return CheckResult(NAME, "skip", ctx.final_state_unavailable)
    if not ctx.golden_final_state_hash:
        return CheckResult(NAME, "skip", "the golden records no final state hash")
    final = None
    for attempt in ctx.history.attempts:
        rank = views.authoritative_rank(attempt, h.FINAL_STATE)
        if rank is not None:
            final = (attempt.index, list(attempt.events(h.FINAL_STATE, rank=rank))[-1])
    evidence: dict = {"golden": ctx.golden_final_state_hash}
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
