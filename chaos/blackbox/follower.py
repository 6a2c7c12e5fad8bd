"""Following one attempt of an unmodified trainer from outside: its ranks' output and its checkpoint
directory become the same history records chaos.probe writes, so every checker works unchanged.

Per attempt, the supervisor builds one Follower and polls it every tick (and whenever the checkpoint
watcher's inotify descriptor wakes its selector):
- each rank's `rank-<r>.out` is read incrementally; complete lines go to the workload's LineReader (e.g.
  chaos.workloads.megatron_lm.reader), which returns history records; the follower writes them into that
  rank's `rank-<r>.jsonl`, stamped like the probe's;
- the checkpoint directory is watched (chaos.blackbox.checkpoint_watch): a save beginning, each file
  written, the metadata, the tracker. The tracker naming iteration N is the commit (as in Megatron-LM,
  where rank 0 rewrites it after every rank has written its part): a `checkpoint_committed` record goes
  into rank 0's history with the files and sizes seen in the directory at that moment.

Every record and every directory event is also returned as an Observation, which is what the supervisor's
observed triggers fire on. Torch-free.

A job that restarts in-process (NVRx's wrapper re-entering the training function, restart.by: job) goes on
writing the same output files from the same processes, so one file holds several attempts. A rank's part of an
attempt ends at the line its reader turns into `job_reentered`: what the rank printed after it is held, unread
by this attempt, and the next attempt's follower continues each file from there (carry_outputs): no line is
read twice or lost. The job has re-entered (job_reentered) once every rank passed its re-entry line, or once the
restarter said its handling completed, which it says after every rank's restart barrier.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from chaos import history, safe_files
from chaos.blackbox.checkpoint_watch import TRACKER_WRITTEN, CheckpointEvent, CheckpointWatcher
from chaos.blackbox.inotify import IN_MODIFY, Inotify
from chaos.checkpoint_layout import iteration_dir_name


class LineReader(Protocol):
    """Turns one rank's output lines into history records: [(event, fields)] per line."""

    def feed(self, line: str, line_number: int) -> list[tuple[str, dict[str, Any]]]: ...


@dataclass(frozen=True)
class Observation:
    """Something the follower saw: a history record it wrote, or a checkpoint-directory event."""

    event: str
    """A chaos.history event name (metrics, point, checkpoint_loaded, ...) or a checkpoint phase seen on disk
    (checkpoint.begin / .shard / .metadata / .tracker)."""
    rank: int | None
    mono: float
    step: int | None = None
    phase: str | None = None
    index: int | None = None
    fields: dict[str, Any] = field(default_factory=dict)


class _OutputTail:
    """New complete lines of a growing file; the partial last line waits for its newline, up to
    PARTIAL_LINE_LIMIT bytes: a longer one is handed out once, cut there (a trainer printing hundreds of MiB
    without a newline must not make every poll copy them)."""

    PARTIAL_LINE_LIMIT = 1 << 20

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = None  # opened once the rank has created it, then kept (read every tick)
        self._lines = safe_files.LineSplitter(self.PARTIAL_LINE_LIMIT)
        self.lines_read = 0
        self._held: deque[tuple[int, str]] = deque()
        """Lines read but given back (hold): they come first the next time lines are taken."""

    def take(self, final: bool = False) -> list[tuple[int, str]]:
        """The held lines, then what is new (with the unterminated last line when `final`)."""
        held = list(self._held)
        self._held.clear()
        return held + (self.flush() if final else self.read_lines())

    def hold(self, lines: list[tuple[int, str]]) -> None:
        """Lines taken but not this reader's to read (they belong to the next attempt): kept for the next take."""
        self._held.extendleft(reversed(lines))

    def read_lines(self) -> list[tuple[int, str]]:
        if self._file is None:
            try:  # never through a link, never blocking on a FIFO planted under the output's name
                self._file = open(safe_files.open_regular(self.path), "rb")
            except OSError:
                return []
        out = []
        # From where the last read stopped, a block at a time, up to what is written now; at most 64 blocks a
        # poll, so a rank printing without pause cannot keep the supervisor here (the next poll goes on).
        for _ in range(64):
            data = self._file.read(self.PARTIAL_LINE_LIMIT)
            if not data:
                break
            for line, _cut in self._lines.feed(data):
                out.append(self._numbered(line))
        return out

    def _numbered(self, line: bytes) -> tuple[int, str]:
        self.lines_read += 1
        return self.lines_read, line.decode("utf-8", errors="replace").rstrip("\r")

    def flush(self) -> list[tuple[int, str]]:
        """The unterminated last line, when the writer is gone for good."""
        lines = self.read_lines()
        rest = self._lines.rest()
        if rest:
            lines.append(self._numbered(rest))
        return lines

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


@dataclass
class CarriedOutputs:
    """An in-process restart's hand-over: the ranks' output files (in the launch attempt's directory: the same
    processes go on writing them), each read up to where the attempt that ended stopped, lines held past a rank's
    re-entry included."""

    directory: Path
    tails: dict[int, _OutputTail]

    def close(self) -> None:
        for tail in self.tails.values():
            tail.close()


class Follower:
    def __init__(self, run_dir: Path, attempt: int, world_size: int, checkpoint_dir: Path,
                 tracker_name: str, new_reader: Callable[[int], LineReader], use_inotify: bool = True,
                 outputs: CarriedOutputs | None = None) -> None:
        """`outputs`: the ranks' output as the previous attempt left it, when the job re-entered in-process (the
        histories still go to this attempt's directory); None: the files in this attempt's directory, from the start."""
        self.attempt_dir = history.attempt_dir(run_dir, attempt)
        self.attempt = attempt
        self.world_size = world_size
        self.checkpoint_dir = Path(checkpoint_dir)
        self.watcher = CheckpointWatcher(self.checkpoint_dir, tracker_name, use_inotify=use_inotify)
        self.output_dir = outputs.directory if outputs is not None else self.attempt_dir
        self._outputs = (outputs.tails if outputs is not None else
                         {rank: _OutputTail(self.output_dir / f"rank-{rank}.out") for rank in range(world_size)})
        self.reentered: dict[int, str] = {}
        """rank -> the re-entry line (its kind) that ended its part of this attempt (in-process restart)."""
        self._every_rank_reentered = False
        # A rank's output growing wakes the supervisor at once (a step-boundary trigger lands within
        # milliseconds of the line); without inotify the supervisor's tick reads it instead.
        self._output_events: Inotify | None = None
        try:
            self.attempt_dir.mkdir(parents=True, exist_ok=True)
            self._output_events = Inotify()
            self._output_events.add_watch(self.output_dir, IN_MODIFY)
        except OSError:
            if self._output_events is not None:
                self._output_events.close()
            self._output_events = None
        self._readers = {rank: new_reader(rank) for rank in range(world_size)}
        self._writers = {rank: history.HistoryWriter(history.rank_history_path(run_dir, attempt, rank),
                                                     rank=rank, attempt=attempt, observed=True)
                         for rank in range(world_size)}
        self.last_iteration: int | None = None
        """The newest iteration any rank has logged in this attempt."""
        self.load_finished = False

    # ---- for the supervisor ---------------------------------------------------------------------------
    def filenos(self) -> list[int]:
        """Descriptors that become readable when there is something new to poll."""
        fds = [self.watcher.fileno()]
        if self._output_events is not None:
            fds.append(self._output_events.fileno())
        return [fd for fd in fds if fd is not None]

    @property
    def watch_mode(self) -> str:
        return self.watcher.mode

    def rank_started(self, rank: int, pid: int) -> None:
        self._writers[rank].write(history.START, pid=pid, world_size=self.world_size, observation="log")

    def poll(self, final: bool = False) -> tuple[bool, list[Observation]]:
        """(did any rank's output grow, what was seen since the last poll). `final`: the ranks are gone, take
        unterminated last lines too."""
        grew = False
        observations: list[Observation] = []
        if self._output_events is not None:
            self._output_events.read_events()  # only a wake-up: the tails below read what is new
        for rank, tail in self._outputs.items():
            if rank in self.reentered:
                continue  # what it printed since is the next attempt's
            lines = tail.take(final)
            grew = grew or bool(lines)
            for position, (number, line) in enumerate(lines):
                records = self._readers[rank].feed(line, number)
                for event, fields in records:
                    observations.append(self._record(rank, event, fields))
                reentry = next((fields for event, fields in records if event == history.JOB_REENTERED), None)
                if reentry is not None:
                    self.reentered[rank] = str(reentry.get("kind"))
                    self._every_rank_reentered = self._every_rank_reentered or bool(reentry.get("every_rank"))
                    tail.hold(lines[position + 1:])
                    break
        for event in self.watcher.poll():
            observations.extend(self._on_checkpoint_event(event))
        return grew, observations

    def snapshot(self) -> dict[str, Any]:
        """What was observed right now: the evidence a black-box landing records."""
        return {"last_iteration_logged": self.last_iteration, "tracker": self.watcher.tracker_content(),
                "files": self.watcher.files_present(), "load_finished": self.load_finished}

    @property
    def job_reentered(self) -> bool:
        """The job re-entered its training function in every rank (in-process restart): this attempt is over.
        Every rank logged its own re-entry, or one rank's re-entry line speaks for all (`every_rank`: NVRx's
        restarter, past the barrier every rank's restart goes through)."""
        return len(self.reentered) == self.world_size or self._every_rank_reentered

    def carry_outputs(self) -> CarriedOutputs:
        """The ranks' output files as this attempt leaves them, for the next attempt's follower (in-process
        restart: the same processes write on); close() then leaves them open. A rank that passed no re-entry line
        of its own is handed on where its output stands."""
        carried = CarriedOutputs(self.output_dir, self._outputs)
        self._outputs = {}
        return carried

    def close(self) -> None:
        self.watcher.close()
        if self._output_events is not None:
            self._output_events.close()
        for tail in self._outputs.values():
            tail.close()
        for writer in self._writers.values():
            writer.close()

    # ---- internals ------------------------------------------------------------------------------------
    def _record(self, rank: int, event: str, fields: dict[str, Any]) -> Observation:
        record = self._writers[rank].write(event, **fields)
        step = fields.get("step")
        if event == history.METRICS and step is not None:
            self.last_iteration = max(step, self.last_iteration or 0)
        elif event == history.CHECKPOINT_LOADED:
            self.load_finished = True
        return Observation(event=event, rank=rank, mono=record["mono"], step=step, phase=fields.get("phase"),
                           index=fields.get("index"), fields=fields)

    def _on_checkpoint_event(self, event: CheckpointEvent) -> list[Observation]:
        seen = Observation(event=event.phase, rank=None, mono=event.mono, step=event.iteration,
                           phase=event.phase, index=event.index,
                           fields={"path": event.path, "tracker": event.tracker})
        out = [seen]
        if event.phase == TRACKER_WRITTEN and event.iteration is not None:
            # The tracker names a new iteration: Megatron's commit point. What the directory held then is
            # recorded, so a later check can tell whether a committed checkpoint changed afterwards.
            directory = self.checkpoint_dir / iteration_dir_name(event.iteration)
            out.append(self._record(0, history.CHECKPOINT_COMMITTED, {
                "iteration": event.iteration, "path": str(directory),
                "files": self.watcher.files_present(event.iteration), "seen_on_disk": True}))
        return out

