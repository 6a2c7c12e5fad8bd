"""Oracle 2: every restart resumed from the newest checkpoint fully committed before it started.

Committed = a `checkpoint_committed` record (written only after the tracker names the directory) in an
earlier attempt. Excluded: checkpoints the tester corrupted before the attempt started, ones that had
files on the local disk of a node lost before it (node_loss: they cannot be whole any more) and ones a
rank rejected; everything else must be the one loaded. Loading a directory nobody committed (a partial or
untracked one) or an older checkpoint fails, and so does loading the right directory but resuming at
another iteration (a skipped or repeated step).
"""

from __future__ import annotations

from pathlib import Path

from chaos.checkers import views
from chaos.checkers.base import CheckContext, CheckResult

NAME = "resume_point"


def check(ctx: CheckContext) -> CheckResult:
    history = ctx.history
    attempts = [a for a in history.attempts]
    if len(attempts) < 2:
        return CheckResult(NAME, "skip", "no restart: nothing was resumed", {"attempts": len(attempts)})
    rows, failures = [], []
    for attempt in attempts[1:]:
        index = attempt.index
        committed = views.committed_checkpoints(history, before_attempt=index)
        started = views.attempt_start_mono(history, index)
        corrupted = views.corrupted_iterations(history, started)
        lost = views.lost_iterations(history, started)
        rejected = views.rejected_checkpoints(history, up_to_attempt=index)
        usable = [i for i in committed if i not in corrupted and i not in lost and i not in rejected]
        expected = max(usable, default=0)
        record = views.loaded_record(attempt)
        row = {"attempt": index, "expected_iteration": expected, "loaded_iteration": None, "loaded_path": None,
               "committed_before": sorted(committed), "excluded_corrupted": sorted(corrupted & set(committed)),
               "excluded_lost": sorted(set(lost) & set(committed)),
               "excluded_rejected": sorted(set(rejected) & set(committed))}
        rows.append(row)
        first_step, _ = views.step_range(attempt)
        if record is None:
            if first_step is not None:
                failures.append(f"attempt {index} trained (from step {first_step}) without a checkpoint_loaded record")
            else:
                row["note"] = "never finished loading (died before its first step)"
            continue
        loaded = int(record["iteration"])
        path = record.get("path")
        path_iteration = views.iteration_of(path)
        row.update(loaded_iteration=loaded, loaded_path=path)
        per_rank = views.loaded_iterations(attempt)
        if len(set(per_rank.values())) > 1:
            row["per_rank"] = per_rank
            failures.append(f"attempt {index}: ranks resumed from different iterations {per_rank}")
        if path is not None and (path_iteration is None or path_iteration not in committed):
            failures.append(f"attempt {index} loaded {Path(str(path)).name}, which no earlier attempt committed "
                            f"(a partial or untracked checkpoint; committed: {sorted(committed) or 'none'})")
            continue
        if path_iteration is not None and path_iteration in corrupted:
            failures.append(f"attempt {index} loaded iteration {path_iteration}, which the tester corrupted")
            continue
        if path_iteration is not None and path_iteration in lost:
            node = lost[path_iteration].get("node")
            failures.append(f"attempt {index} loaded iteration {path_iteration}, which had files on node {node}'s "
                            f"local disk, lost with the node ({lost[path_iteration].get('fault_id')})")
            continue
        if path_iteration is not None and path_iteration != loaded:
            failures.append(f"attempt {index} loaded {Path(str(path)).name} but resumed at iteration {loaded}")
            continue
        if loaded != expected:
            kind = "an older checkpoint" if loaded < expected else "a newer, never-committed iteration"
            failures.append(f"attempt {index} resumed from iteration {loaded}, expected {expected} "
                            f"(newest committed before it); that is {kind}")
        for iteration, info in rejected.items():
            if iteration in committed and iteration not in corrupted and info.get("attempt") == index:
                problems = ctx.checkpoint_problems(ctx.checkpoint_dir / views.iteration_dir_name(iteration),
                                                   committed.get(iteration))
                if not problems:
                    failures.append(f"attempt {index} rejected iteration {iteration} ({info.get('reason')}), "
                                    f"but it is intact on disk")
    evidence = {"attempts": rows}
    if failures:
        return CheckResult(NAME, "fail", "; ".join(failures), evidence)
    summary = ", ".join(f"{r['attempt']}<-{r['loaded_iteration']}" for r in rows if r["loaded_iteration"] is not None)
    never = [r["attempt"] for r in rows if r["loaded_iteration"] is None]
    if not summary:
        # nothing resumed: no evidence either way (recovery_progress and steps_lost judge restarts that died so)
        return CheckResult(NAME, "skip", f"no restart finished loading a checkpoint (attempts {never} died before "
                                         f"their first step): nothing resumed to judge", evidence)
    unloaded = f"; attempt(s) {never} died before finishing a load" if never else ""
    return CheckResult(NAME, "pass", f"every restart resumed from the newest committed checkpoint ({summary}){unloaded}",
                       evidence)
