"""The probe: the few calls a trainer makes so that chaos can follow it and land faults exactly.

Any PyTorch trainer adopts it in a few lines::

    from chaos.probe import get_probe
    probe = get_probe()                      # a no-op when no supervisor launched this process
    probe.checkpoint_loaded(iteration, path)
    for step in range(start + 1, train_iters + 1):
        probe.step_begin(step)
        with probe.phase("forward", step): ...
        with probe.phase("backward", step): ...
        probe.metrics(step, lm_loss=..., grad_norm=..., lr=..., consumed_samples=...)
        probe.step_end(step)

Probe points (phases) are dotted names: ``data``, ``forward``, ``backward``, ``optimizer``,
``checkpoint.begin``, ``checkpoint.shard`` (index k = after the k-th shard file), ``checkpoint.metadata``,
``checkpoint.commit``, ``checkpoint.tracker``, ``checkpoint.load``. When the supervisor planned a fault at
a point, the probe holds the rank there (blocking on the control socket) until the supervisor has sent its
signal from outside, so the signal lands at that point and nowhere else. A `raise` fault is done by the probe
itself: the release carries the message, and the probe raises InjectedFault(message) from that point.

Under an in-process restart layer (the trainer's training function re-entered in the same process after a
failure) each entry is an attempt of its own: `reenter(n)` closes the process-wide probe and makes the next.

No torch import here: it is imported by the supervisor's side too, and must cost nothing in a rank.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from pathlib import Path
from typing import Any, Iterator

from chaos import control, history

PHASES = (
    "data",
    "forward",
    "backward",
    "optimizer",
    "checkpoint.begin",
    "checkpoint.shard",
    "checkpoint.metadata",
    "checkpoint.commit",
    "checkpoint.tracker",
    "checkpoint.load",
)

COORDINATOR_PHASES = ("checkpoint.metadata", "checkpoint.commit", "checkpoint.tracker")
"""Points only the coordinator (rank 0) reaches: DCP's metadata write, the rename and the tracker update."""

STEP_PHASES = ("data", "forward", "backward", "optimizer")
"""Points every training step passes (the default phases of a random entry)."""

MICROBATCH_PHASES = ("forward", "backward")
"""Points whose `index` is the micro-batch (1-based)."""

SAVE_PHASES = ("checkpoint.begin", "checkpoint.shard", "checkpoint.metadata", "checkpoint.commit",
               "checkpoint.tracker")
"""Points reached only while saving: at steps that are multiples of save_interval, the last step, or the
step a graceful SIGTERM stopped at."""


class InjectedFault(RuntimeError):
    """Raised by the probe where a scenario planned a `raise` fault (chaos.faults.exception), with the
    scenario's message: it stands for a Python or CUDA error of the trainer's own. A trainer must not catch it
    specially: it propagates out of probe.point() / probe.phase() like any error from that point would."""


class Probe:
    """Writes this rank's history and honours the supervisor's holds. Disabled: every call returns at once."""

    def __init__(self, history_dir: Path | None, rank: int, attempt: int, control_socket: str | None,
                 reentry: int = 0) -> None:
        self.enabled = history_dir is not None
        self.rank = rank
        self.attempt = attempt
        self.step: int | None = None
        self.phase_name: str | None = None
        self._holds: list[dict] = []
        self._sock: socket.socket | None = None
        self._reader: control.LineReader | None = None
        self._writer: history.HistoryWriter | None = None
        if not self.enabled:
            return
        self._writer = history.HistoryWriter(
            Path(history_dir) / f"rank-{rank}.jsonl", rank=rank, attempt=attempt
        )
        self._writer.write(
            history.START,
            pid=os.getpid(),
            world_size=int(os.environ.get("WORLD_SIZE", "1")),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
            host=socket.gethostname(),
            **({"reentry": reentry} if reentry else {}),
        )
        if control_socket:
            self._connect(control_socket)

    # ---- control channel ----------------------------------------------------------------------
    def _connect(self, path: str) -> None:
        sock = control.connect(path)
        self._sock = sock
        self._reader = control.LineReader(sock)
        control.send(sock, {"type": "hello", "rank": self.rank, "pid": os.getpid(), "attempt": self.attempt,
                            "token": os.environ.get(control.ENV_RUN_TOKEN), "host": socket.gethostname()})
        plan = self._reader.read_message()
        if plan is None or plan.get("type") != "plan":
            raise RuntimeError(f"chaos probe: expected a plan from the supervisor, got {plan!r}")
        self._holds = list(plan["holds"])

    def _maybe_hold(self, step: int | None, phase: str, index: int | None) -> None:
        for hold in self._holds:
            if control.hold_matches(hold, step, phase, index):
                self._holds.remove(hold)
                self._hold(hold, step, phase, index)
                return

    def _hold(self, hold: dict, step: int | None, phase: str, index: int | None) -> None:
        assert self._sock is not None and self._reader is not None and self._writer is not None
        self._writer.write(history.HELD, step=step, phase=phase, index=index, fault_id=hold["fault_id"])
        control.send(
            self._sock, {"type": "held", "fault_id": hold["fault_id"], "step": step, "phase": phase, "index": index}
        )
        # Blocks here; a signal arriving now interrupts recv, runs the trainer's Python handler, and
        # recv resumes (PEP 475) until the release comes.
        message = self._reader.read_message()
        if message is None:
            raise RuntimeError("chaos probe: supervisor went away while this rank was held")
        raised = message.get("raise")
        if isinstance(raised, str):  # a `raise` fault: the rank fails here, as with a Python or CUDA error
            self._writer.write(history.RELEASED, fault_id=hold["fault_id"], raised=raised)
            raise InjectedFault(raised)
        self._writer.write(history.RELEASED, fault_id=hold["fault_id"])

    def close(self) -> None:
        """Ends this probe's attempt in a process that goes on (an in-process restart): its connection closed (the
        supervisor sees it end) and its history file closed; any later call writes nothing."""
        self.enabled = False
        self._holds = []
        if self._sock is not None:
            sock, self._sock, self._reader = self._sock, None, None
            sock.close()
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.close()

    # ---- the trainer-facing API ---------------------------------------------------------------
    def event(self, name: str, **fields: Any) -> None:
        if self._writer is not None:
            self._writer.write(name, **fields)

    def point(self, phase: str, step: int | None = None, index: int | None = None) -> None:
        """A named point was reached; if a fault is planned here, hold until it has been delivered."""
        if not self.enabled:
            return
        self.phase_name = phase
        if step is not None:
            self.step = step
        self._writer.write(history.POINT, step=step, phase=phase, index=index)
        if self._holds:
            self._maybe_hold(step, phase, index)

    @contextlib.contextmanager
    def phase(self, phase: str, step: int | None = None, index: int | None = None) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        self.point(phase, step, index)
        yield
        self._writer.write(history.LEAVE, step=step, phase=phase)
        self.phase_name = None

    def owns_run_dir(self) -> bool:
        """Whether the run directory still belongs to this rank's run (control.RUN_TOKEN_FILE holds the token the
        supervisor gave it). False for a rank that outlived its run while a new run took over its --out: such a
        rank must not commit anything there. True outside chaos (no token given)."""
        token = os.environ.get(control.ENV_RUN_TOKEN)
        if not token:
            return True
        try:
            return (Path(os.environ.get(control.ENV_RUN_DIR, "")) / control.RUN_TOKEN_FILE).read_text() == token
        except OSError:
            return False

    def busy(self, what: str) -> None:
        """Long work that writes nothing begins (imports, process groups, data and the first step; the final
        state hash): the supervisor allows restart.startup_timeout_s of silence instead of hang_timeout_s
        until busy_end. A rank stuck in it is still called hung, only later."""
        self.event(history.BUSY, what=what)

    def busy_end(self, what: str) -> None:
        self.event(history.BUSY_END, what=what)

    def step_begin(self, step: int) -> None:
        self.step = step
        self.event(history.STEP_BEGIN, step=step)

    def step_end(self, step: int) -> None:
        self.event(history.STEP_END, step=step)

    def metrics(self, step: int, **values: Any) -> None:
        self.event(history.METRICS, step=step, **values)

    def checkpoint_loaded(self, iteration: int, path: str | None) -> None:
        self.event(history.CHECKPOINT_LOADED, iteration=iteration, path=path)

    def checkpoint_rejected(self, iteration: int | None, path: str, reason: str) -> None:
        self.event(history.CHECKPOINT_REJECTED, iteration=iteration, path=path, reason=reason)

    def checkpoint_committed(self, iteration: int, path: str) -> None:
        self.event(history.CHECKPOINT_COMMITTED, iteration=iteration, path=path)

    def signal_received(self, signum: int) -> None:
        self.event(history.SIGNAL_RECEIVED, signal=signal.Signals(signum).name, step=self.step, phase=self.phase_name)

    def final_state(self, step: int, state_hash: str) -> None:
        self.event(history.FINAL_STATE, step=step, state_hash=state_hash)

    def train_end(self, step: int, reason: str) -> None:
        self.event(history.TRAIN_END, step=step, reason=reason)


_PROBE: Probe | None = None


def get_probe() -> Probe:
    """The process-wide probe, configured from the environment the supervisor set (or disabled)."""
    global _PROBE
    if _PROBE is None:
        _PROBE = _probe_from_environment(reentry=0)
    return _PROBE


def reenter(reentry: int) -> Probe:
    """An in-process restart layer (NVRx's inprocess.Wrapper) re-entered the training function in this process
    for the `reentry`-th time: that is the job's next attempt (control.rank_attempt). The process-wide probe of
    the attempt that failed is closed (its connection and history end there) and replaced by one that writes
    this attempt's history and says hello again, from the same pid, as its attempt. The re-entered rank is busy
    building everything anew until its trainer says otherwise, as a fresh process is after its hello."""
    global _PROBE
    if reentry < 1:
        raise ValueError(f"a re-entry is counted from 1, got {reentry}")
    if _PROBE is not None:
        _PROBE.close()
    _PROBE = _probe_from_environment(reentry)
    _PROBE.busy("startup")
    return _PROBE


def _probe_from_environment(reentry: int) -> Probe:
    attempt, history_dir = control.rank_attempt(os.environ, reentries=reentry)
    return Probe(
        history_dir=Path(history_dir) if history_dir else None,
        rank=int(os.environ.get("RANK", "0")),
        attempt=attempt,
        control_socket=os.environ.get(control.ENV_SOCKET) or None,
        reentry=reentry,
    )
