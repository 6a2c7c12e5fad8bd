"""Did a planted bug change the job at all? Its run against the control run (same scenario, same faults, no
bug): every logged metric at every step, the data each step saw where the trainer reports it, and every
entry of every committed checkpoint.

"No change" is judged by what the uninterrupted runs measured, never by the scenario's tolerance: equal
(bitwise; as printed for values read from a log) where the golden's repeated runs were identical, within the
spread they showed where they were not. A job whose golden measured nothing (a Megatron golden file, no
repeats) is held to equality: a bug is then never called inert because of a tolerance (Megatron's 5 %) that
would also hide it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from chaos import comparison
from chaos.calibration import Rule, decide_rule
from chaos.golden import Golden
from chaos.golden_runs import recorded_from_history


@dataclass
class Change:
    changed: bool
    what: str
    """The first change found, or what was compared when there was none."""
    compared_steps: int = 0
    compared_iterations: list[int] = field(default_factory=list)
    unread: list[str] = field(default_factory=list)
    """Checkpoints that could not be compared (unreadable or a form chaos does not read), with why."""

    def to_dict(self) -> dict[str, Any]:
        return {"changed": self.changed, "what": self.what, "compared_steps": self.compared_steps,
                "compared_iterations": self.compared_iterations, "unread": self.unread}


def change_rule(golden: Golden | None, device: str) -> Rule:
    """The rule for "no change": what the golden's repeats measured; equality where they measured nothing."""
    rule = decide_rule(None, golden.calibration if golden else None, device)
    if rule.mode == "megatron":
        return Rule("exact", "the golden measured no spread between uninterrupted runs: equal")
    return rule


def against_control(control_dir: Path, bug_dir: Path, golden: Golden | None, device: str,
                    printed_formats: Mapping[str, str]) -> Change:
    rule = change_rule(golden, device)
    metrics = _metrics_change(control_dir, bug_dir, rule, printed_formats)
    if metrics.changed:
        return metrics
    state = _state_change(control_dir, bug_dir, golden)
    state.compared_steps = metrics.compared_steps
    if not state.changed:
        unread = f"; {len(state.unread)} checkpoint(s) not compared" if state.unread else ""
        state.what = (f"every logged value at {metrics.compared_steps} steps and every entry of "
                      f"{len(state.compared_iterations)} checkpoint(s) equal the control's ({rule.mode}){unread}")
    return state


def _metrics_change(control_dir: Path, bug_dir: Path, rule: Rule, printed_formats: Mapping[str, str]) -> Change:
    control, _ = recorded_from_history(control_dir)
    planted, _ = recorded_from_history(bug_dir)
    for metric, values in control.metrics.items():
        extra = sorted(set(planted.metrics.get(metric, {})) - set(values))
        if extra:
            return Change(True, f"{metric} logged at step {extra[0]}, which the control never logged")
    result = comparison.compare(control, planted.metrics, rule.mode, rule.tolerances,
                                printed_formats=printed_formats, skip=tuple(rule.not_compared))
    steps = sum(m.compared_steps for m in result.metrics)
    if not result.passed and result.first_divergence is not None:
        metric, step, expected, actual = result.first_divergence
        return Change(True, f"{metric} at step {step}: control {expected!r}, with the bug {actual!r}", steps)
    if not result.passed:
        return Change(True, result.summary(), steps)
    for step in sorted(set(control.data_hashes) | set(planted.data_hashes)):
        if control.data_hashes.get(step) != planted.data_hashes.get(step):
            return Change(True, f"the data of step {step} differs from the control's", steps)
    return Change(False, "", steps)


def _state_change(control_dir: Path, bug_dir: Path, golden: Golden | None) -> Change:
    from chaos.state.checkpoint import UnsupportedCheckpoint
    from chaos.state.compare import compare_state
    from chaos.state.files import CheckpointDamage
    from chaos.state.fingerprint import read_state

    mine, theirs = _committed_on_disk(control_dir), _committed_on_disk(bug_dir)
    only = sorted(set(mine) ^ set(theirs))
    if only:
        side = "the bug run" if only[0] in theirs else "the control"
        return Change(True, f"iteration {only[0]} was committed only in {side}")
    change = Change(False, "")
    for iteration in sorted(mine):
        golden_checkpoint = golden.checkpoints.get(iteration) if golden else None
        spread = golden_checkpoint.spread if golden_checkpoint else {}
        sample = [key for key, value in spread.items() if isinstance(value, float) and value > 0]
        try:
            control = read_state(mine[iteration], sample=sample).fingerprint.entries
            planted = read_state(theirs[iteration], sample=sample).fingerprint.entries
        except (CheckpointDamage, UnsupportedCheckpoint) as error:
            change.unread.append(f"iteration {iteration}: {error}")
            continue
        result = compare_state(iteration, control, spread, planted)
        change.compared_iterations.append(iteration)
        found = result.differences + result.notes
        if found:
            return Change(True, f"{found[0].sentence()} at iteration {iteration} "
                                f"({len(found)} entr{'y differs' if len(found) == 1 else 'ies differ'} from the control's)",
                          compared_iterations=change.compared_iterations)
    return change


def _committed_on_disk(run_dir: Path) -> dict[int, Path]:
    from chaos.checkers import views
    from chaos.history import load_run_history

    committed = views.committed_checkpoints(load_run_history(run_dir))
    out = {}
    for iteration in committed:
        directory = Path(run_dir) / "checkpoints" / views.iteration_dir_name(iteration)
        if directory.is_dir() and not directory.is_symlink():
            out[iteration] = directory
    return out
