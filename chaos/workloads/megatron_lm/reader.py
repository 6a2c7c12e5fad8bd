"""One rank's Megatron-LM output -> the history records chaos's checkers read (the probe's vocabulary).

    iteration N logged          -> step_begin, metrics (lm_loss, grad_norm, lr, consumed_samples, num_zeros),
                                   step_end; all at the moment the line is seen (the step is *observed* done)
    loading checkpoint ... N    -> point(checkpoint.load, step N)   (what `checkpoint.load` triggers fire on)
    successfully loaded ... N   -> checkpoint_loaded(N, iter dir);  no checkpoint found -> checkpoint_loaded(0)
    saving checkpoint at N      -> save_started(N)                  (the directory watcher gives the phases)
    successfully saved ... N    -> save_finished(N)
    exiting program after SIGTERM / at iteration / after minutes -> train_end(preempted)
    after training is done      -> train_end(complete)
    a traceback's exception     -> exception(summary)
    in-process restart (--inprocess-restart), NVRx's wrapper and restarter lines:
      fn_ex / term_ex / state=handling stage=starting   -> job_interrupted(role detected): the job noticed
                                                           (fn_ex: and exception(summary), what the function raised)
      restart_ex / state=handling stage=completed       -> job_reentered, the first after a detection: this
                                                           rank's re-entry, the last record of its attempt
      exit_ex / state=aborted                           -> job_interrupted(role gave_up)
    a line that should parse but does not -> parse_error(line, line_number, reason)

Megatron-LM prints the *second* iteration each process logs as the mean of its first two (its first log
line does not reset the loss accumulator: `should_reset = not is_first_iteration` in training_log). The
record of that line carries `loss_window: [first, second]`; chaos.checkers.trajectory compares it with
the golden's mean over the same steps instead of one step's loss. chaos forces `--log-interval 1`, so every
later line is that iteration's own loss. A re-entered training function is a new `pretrain()` to Megatron (its
accumulators start again), and it is the next attempt's, read by the next attempt's reader.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from chaos import history, safe_files
from chaos.checkpoint_layout import TRACKER, iteration_dir_name
from chaos.workloads.megatron_lm import log_lines as ll


Record = tuple[str, dict[str, Any]]


class MegatronLogReader:
    def __init__(self, rank: int, checkpoint_dir: Path) -> None:
        self.rank = rank
        self.checkpoint_dir = Path(checkpoint_dir)
        self._tracebacks = ll.TracebackReader()
        self._logged: list[int] = []
        """Iterations this process logged, in order (the loss-window rule needs the first two)."""
        self._last_step: int | None = None
        self._interrupted = False
        """The job's in-process layer noticed a failure in this attempt: its next re-entry line ends the attempt."""

    def feed(self, line: str, line_number: int) -> list[Record]:
        out: list[Record] = []
        exception = self._tracebacks.feed(line)
        if exception is not None:
            out.append((history.EXCEPTION, {"summary": exception.summary, "exception_type": exception.exception_type,
                                    "line_number": line_number}))
        event = ll.parse_line(line)
        if event is None:
            return out
        if isinstance(event, ll.ParseError):
            out.append((history.PARSE_ERROR, {"line": event.line[:500], "line_number": line_number, "reason": event.reason}))
        elif isinstance(event, ll.IterationLine):
            out.extend(self._iteration(event))
        elif isinstance(event, ll.LoadBegin):
            out.append((history.POINT, {"phase": "checkpoint.load", "step": event.iteration,
                                        "directory": event.directory}))
        elif isinstance(event, ll.LoadDone):
            path = str(Path(event.directory) / iteration_dir_name(event.iteration))
            out.append((history.CHECKPOINT_LOADED, {"iteration": event.iteration, "path": path}))
        elif isinstance(event, ll.NoCheckpoint):
            # Megatron prints the same warning for its non-persistent checkpoint directory: only the tracker
            # of the directory chaos made it load from means "starting from scratch".
            if Path(event.tracker_path) == self.checkpoint_dir / TRACKER:
                out.append((history.CHECKPOINT_LOADED, {"iteration": 0, "path": None}))
        elif isinstance(event, ll.SaveBegin):
            out.append((history.SAVE_STARTED, {"iteration": event.iteration, "directory": event.directory,
                                       "ckpt_format": event.ckpt_format}))
        elif isinstance(event, ll.SaveDone):
            out.append((history.SAVE_FINISHED, {"iteration": event.iteration}))
        elif isinstance(event, (ll.ExitOnSignal, ll.ExitAtIteration, ll.ExitAfterDuration)):
            step = getattr(event, "iteration", None) or self._last_step
            out.append((history.TRAIN_END, {"step": step, "reason": "preempted", "message": type(event).__name__}))
        elif isinstance(event, ll.TrainingDone):
            out.append((history.TRAIN_END, {"step": self._last_step, "reason": "complete"}))
        elif isinstance(event, (ll.WrapperLine, ll.RestarterState)):
            out.extend(self._in_process(event, line))
        return out

    def _in_process(self, event: ll.WrapperLine | ll.RestarterState, line: str) -> list[Record]:
        role = event.role
        if role is None:
            return []                  # the first entry starting, the job finishing: not about a failure
        fields = {"layer": "in_process", "kind": event.label, "role": role, "line": safe_files.one_line(line, 300)}
        if role != ll.REENTERED:
            self._interrupted = self._interrupted or role == ll.DETECTED
            out: list[Record] = [(history.JOB_INTERRUPTED, fields)]
            if isinstance(event, ll.WrapperLine) and event.kind == "fn_ex":
                # what the training function died of: the wrapper caught it, so no traceback is printed
                out.append((history.EXCEPTION, {"summary": f"{event.exception} (caught by the in-process wrapper)",
                                                "exception_type": event.exception_type}))
            return out
        if not self._interrupted:
            # The end of the restart that ended the previous attempt (rank 0's `handling completed` comes after its
            # restart_ex, past the restart barrier): that attempt already ended at its first re-entry line.
            return []
        self._interrupted = False
        if isinstance(event, ll.RestarterState):
            # printed past the restart barrier that every rank reaches only after its own restart_ex: every rank
            # has re-entered, whether or not its logging shows its restart_ex (INFO)
            fields["every_rank"] = True
        return [(history.JOB_REENTERED, fields)]

    def _iteration(self, line: ll.IterationLine) -> list[Record]:
        step = line.step
        self._logged.append(step)
        self._last_step = step
        metrics: dict[str, Any] = {"step": step, "lm_loss": line.lm_loss, "grad_norm": line.grad_norm,
                                   "lr": line.learning_rate, "consumed_samples": line.consumed_samples,
                                   "num_zeros": line.num_zeros}
        if len(self._logged) == 2:
            metrics["loss_window"] = list(self._logged)
        if line.truncated:
            metrics["truncated"] = True
        metrics = {key: value for key, value in metrics.items() if value is not None}
        return [(history.STEP_BEGIN, {"step": step}), (history.METRICS, metrics), (history.STEP_END, {"step": step})]
