"""Oracle 6: every committed checkpoint is still intact after the run (so it would load).

Intact = the directory exists, it has the files every checkpoint of the job's uninterrupted run had (learned
from the golden, chaos.state.layout; without such a golden, the workload's own list: DCP's `.metadata`...),
and what the commit vouched for is unchanged (gpt3: every file of the manifest with its size and sha256;
Megatron-LM: every file the tracker update found, with its size). A committed directory may be missing only when keep-last retention removed
it (workload keep_last > 0 and it is older than the newest keep_last). Checkpoints the tester corrupted on
purpose are listed as expected-damaged, not failed. The tracker must name a committed, intact directory,
never a temp or partial one.
"""

from __future__ import annotations

from chaos.checkers import views
from chaos.state import layout
from chaos.checkers.base import CheckContext, CheckResult

NAME = "checkpoints_load"


def check(ctx: CheckContext) -> CheckResult:
    checkpoint_dir = ctx.checkpoint_dir
    committed = views.committed_checkpoints(ctx.history)
    tracker = views.read_tracker(checkpoint_dir)
    keep_last = ctx.keep_last
    corrupted = views.corrupted_iterations(ctx.history)
    iterations = sorted(set(committed) | ({tracker} if tracker else set()))
    kept = set(sorted(committed, reverse=True)[:keep_last]) if keep_last > 0 else set(committed)
    intact, retired, damaged_on_purpose, failures = [], [], {}, []
    for iteration in iterations:
        directory = checkpoint_dir / views.iteration_dir_name(iteration)
        if not directory.exists() and keep_last > 0 and iteration not in kept and iteration != tracker:
            retired.append(iteration)
            continue
        problems = ctx.checkpoint_problems(directory, committed.get(iteration))
        if iteration in corrupted:
            damaged_on_purpose[iteration] = problems or ["intact (the corruption did not stick)"]
            continue
        if problems:
            failures.append(f"{directory.name}: {'; '.join(problems)}")
        else:
            intact.append(iteration)
    if tracker is not None and tracker not in committed:
        failures.append(f"the tracker names iteration {tracker}, which no rank recorded as committed")
    evidence = {"committed": sorted(committed), "tracker": tracker, "intact": intact, "retired_by_keep_last": retired,
                "expected_damaged": {str(k): v for k, v in sorted(damaged_on_purpose.items())},
                "keep_last": keep_last, "temp_dirs": _temp_dirs(checkpoint_dir),
                "complete_means": ({"learned_from_the_golden": dict(ctx.golden_checkpoint_files)}
                                   if ctx.golden_checkpoint_files else "the workload's list of required files"),
                "files_the_golden_never_had": _unexpected(ctx, checkpoint_dir, intact)}
    if failures:
        return CheckResult(NAME, "fail", "; ".join(failures), evidence)
    if not iterations:
        return CheckResult(NAME, "skip", "no checkpoint was committed", evidence)
    extra = f"; expected-damaged (corrupted by the tester): {sorted(damaged_on_purpose)}" if damaged_on_purpose else ""
    judged = " (complete as the uninterrupted run's checkpoints were)" if ctx.golden_checkpoint_files else ""
    return CheckResult(NAME, "pass", f"{len(intact)} committed checkpoint(s) intact{judged}{extra}", evidence)


def _unexpected(ctx: CheckContext, checkpoint_dir, iterations: list[int]) -> dict[str, list[str]]:
    """Files of the run's checkpoints that no checkpoint of the uninterrupted run had (noted, not failed)."""
    if not ctx.golden_checkpoint_files:
        return {}
    out = {}
    for iteration in iterations:
        extra = layout.problems(checkpoint_dir / views.iteration_dir_name(iteration), ctx.golden_checkpoint_files)[1]
        if extra:
            out[str(iteration)] = extra[:10]
    return out


def _temp_dirs(checkpoint_dir) -> list[str]:
    if not checkpoint_dir.is_dir():
        return []
    return sorted(p.name for p in checkpoint_dir.iterdir() if p.name.startswith(".tmp"))
