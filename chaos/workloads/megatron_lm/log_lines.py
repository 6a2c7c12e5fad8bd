"""Megatron-LM's log lines as typed events: one line in, one event (or None) out.

chaos follows an *unmodified* Megatron-LM `pretrain_gpt.py` only through what its ranks print, so this
module is the whole contract with upstream's output. The formats (as Megatron-LM prints them):

    iteration      ' [2026-12-03 13:32:06.249366] iteration       10/      30 | consumed samples:   320 |
                    elapsed time per iteration (ms): 1557.4 | learning rate: 4.687500E-07 |
                    global batch size:    32 | lm loss: 1.092605E+01 | loss scale: 1.0 | grad norm: 2.942 |
                    num zeros: 1951.0 | params norm: 179.956 | number of skipped iterations:   0 |
                    number of nan iterations:   0 |'   (one line; most fields appear only with their flags,
                    every loss the step returns is printed between the batch size and the loss scale)
    save           '[<ts>] saving checkpoint at iteration      10 to <dir> in fsdp_dtensor format'
    async save     '  [<ts>] scheduled an async checkpoint save at iteration      10 to <dir>'
    saved          '  [<ts>] successfully saved checkpoint from iteration      10 to <dir> [ t 1/1, ... ]'
    no checkpoint  'WARNING: could not find the metadata file <dir>/latest_checkpointed_iteration.txt'
    load           ' loading [release ][distributed ]checkpoint from <dir>[ at iteration 16]'
    loaded         '  successfully loaded checkpoint from <dir> [ t 1/1, ... ] at iteration 16'
    milestones     '[<message>] datetime: 2026-12-03 13:32:18.225643 '  with the messages "exiting program
                    after receiving SIGTERM.", "exiting program after <float> minutes", "exiting program at
                    iteration <n>" and "after training is done"
    in-process     with --inprocess-restart, NVIDIA's in-process wrapper (nvidia-resiliency-ext's
                    inprocess.Wrapper) logs 'rank=R fn_ex|term_ex|restart_ex|exit_ex: <exception chain>' in
                    whatever logging format the job has, and its nested-restarter callbacks print (rank 0 only)
                    '[NestedRestarter] name=[InProcess] state=<s>[ stage=<t>]' (WrapperLine, RestarterState)

Lines may carry torchrun's / PyTorch's per-rank prefixes (`[default0]:`, `[rank3]: `); they are stripped.
A line that is plainly one of the above but does not parse gives ParseError rather than None: a format
drift upstream must show up in the report, not silently thin out the history. Tracebacks span lines, so
they have their own stateful reader (TracebackReader).

Standard library only, no I/O: the supervisor and the checkers import this and must never pull in torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Union

# ---- events ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IterationLine:
    """One `training_log` line. Optional fields are None when Megatron did not print them (their flag was
    off, or the line was cut short: then `truncated` is True and the cut-off last field is missing)."""
    step: int
    train_iters: int
    consumed_samples: int
    losses: dict[str, float]          # every loss printed, by its name ("lm loss", "mtp_1 loss", ...)
    learning_rate: float | None
    global_batch_size: int
    loss_scale: float | None
    grad_norm: float | None
    num_zeros: float | None
    params_norm: float | None
    skipped_iterations: int | None
    nan_iterations: int | None
    elapsed_ms: float | None
    timestamp: str | None             # as printed, local time 'YYYY-mm-dd HH:MM:SS.ffffff'
    truncated: bool = False

    @property
    def lm_loss(self) -> float | None:
        return self.losses.get("lm loss")


@dataclass(frozen=True)
class SaveBegin:
    iteration: int
    directory: str
    ckpt_format: str
    timestamp: str | None


@dataclass(frozen=True)
class AsyncSaveScheduled:
    iteration: int
    directory: str
    timestamp: str | None = None


@dataclass(frozen=True)
class SaveDone:
    """Printed by rank 0 right after it wrote the tracker: the save is committed."""
    iteration: int
    directory: str
    timestamp: str | None = None


@dataclass(frozen=True)
class LoadBegin:
    iteration: int | None             # None for a release checkpoint
    directory: str
    distributed: bool                 # torch_dist format ("loading distributed checkpoint")
    release: bool


@dataclass(frozen=True)
class LoadDone:
    iteration: int
    directory: str


@dataclass(frozen=True)
class NoCheckpoint:
    """No tracker file: the job starts from random (or, for a non-persistent directory, skips it)."""
    tracker_path: str


@dataclass(frozen=True)
class ExitOnSignal:
    timestamp: str


@dataclass(frozen=True)
class ExitAtIteration:
    iteration: int
    timestamp: str | None = None


@dataclass(frozen=True)
class ExitAfterDuration:
    minutes: float
    timestamp: str | None = None


@dataclass(frozen=True)
class TrainingDone:
    timestamp: str


@dataclass(frozen=True)
class ExceptionRaised:
    """e.g. "AssertionError at megatron/core/optimizer/distrib_optimizer.py:839 in state_dict: assert ..."."""
    summary: str
    exception_type: str = ""


@dataclass(frozen=True)
class ParseError:
    line: str
    reason: str


# ---- in-process restart (--inprocess-restart): what the job's own recovery layer says ------------------------

DETECTED = "detected"
"""The job noticed a failure: the wrapper caught the training function's exception (fn_ex), was told to restart by
another rank's failure or a timeout (term_ex), or began aborting (the restarter's `handling starting`)."""
REENTERED = "reentered"
"""The job re-enters its training function in the same process: the wrapper restarts (restart_ex), or the restarter
completed its handling (`handling completed`, after the ranks' restart barrier)."""
GAVE_UP = "gave_up"
"""The wrapper gives up (exit_ex: an exception it does not restart for) and the restarter says `aborted`."""

_EXCEPTION_REPR = re.compile(r"([A-Za-z_][\w.]*)\(")
WRAPPER_KINDS = {"fn_ex": DETECTED, "term_ex": DETECTED, "restart_ex": REENTERED, "exit_ex": GAVE_UP}
RESTARTER_STATES = {("initialize", None): None, ("handling", "starting"): DETECTED,
                    ("handling", "completed"): REENTERED, ("finalized", None): None, ("aborted", None): GAVE_UP}
"""Every (state, stage) NVRx's nested-restarter callbacks print, and its role (None: not about a failure: the first
entry's start, the job's clean end)."""


@dataclass(frozen=True)
class WrapperLine:
    """One of the in-process wrapper's own lines about the training function, from any rank, in any logging
    format around it (NVRx's `log_exc`: 'rank=R KIND: repr(exception) <- repr(its cause) ...')."""
    kind: str                         # fn_ex | term_ex | restart_ex | exit_ex
    rank: int
    exception: str

    @property
    def role(self) -> str:
        return WRAPPER_KINDS[self.kind]

    @property
    def exception_type(self) -> str:
        """The outermost exception's class name ('' when the text is not a repr)."""
        m = _EXCEPTION_REPR.match(self.exception)
        return m[1] if m else ""

    @property
    def label(self) -> str:
        return self.kind


@dataclass(frozen=True)
class RestarterState:
    """A line of NVRx's nested-restarter callbacks (Megatron-LM composes them into its wrapper; rank 0 prints them)."""
    state: str                        # initialize | handling | finalized | aborted
    stage: str | None                 # starting | completed (handling only)

    @property
    def role(self) -> str | None:
        return RESTARTER_STATES[(self.state, self.stage)]

    @property
    def label(self) -> str:
        return f"state={self.state}" + (f" stage={self.stage}" if self.stage else "")


Event = Union[IterationLine, SaveBegin, AsyncSaveScheduled, SaveDone, LoadBegin, LoadDone, NoCheckpoint,
              ExitOnSignal, ExitAtIteration, ExitAfterDuration, TrainingDone, ExceptionRaised, WrapperLine,
              RestarterState, ParseError]

# ---- prefixes --------------------------------------------------------------------------------------

# torchrun's tee prefix `[default0]:` (local rank, glued to the line) and the `[rank3]: ` (global rank, one
# space) PyTorch's distributed excepthook puts before each line of an uncaught error; they can stack.
# Exactly these characters go, so a traceback's indentation survives for TracebackReader.
_RANK_PREFIX = re.compile(r"\[default(\d+)\]:|\[rank(\d+)\]: ?")


def split_rank_prefix(line: str) -> tuple[int | None, str]:
    """(the number of the innermost rank prefix or None, the line without prefixes and line ending).
    A stream that interleaves several ranks needs one TracebackReader per rank: this says whose line it is."""
    line = line.rstrip("\r\n")
    rank = None
    while m := _RANK_PREFIX.match(line):
        rank, line = int(m.group(1) or m.group(2)), line[m.end():]
    return rank, line


# ---- the iteration line ----------------------------------------------------------------------------

_TS = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?"
# What makes a line "ours": `iteration N/ M |` anywhere. The strict form adds where it may start.
_ITERATION_MARK = re.compile(r"\biteration\s+\d+/\s*\d+\s*\|")
_ITERATION_HEAD = re.compile(rf"(?:\[(?P<ts>{_TS})\]\s*)?iteration\s+(?P<step>\d+)/\s*(?P<total>\d+)\s*\|")

# Keys this parser types, with the IterationLine field each fills. Others (throughput, energy, skipped
# samples, ...) are known upstream but not needed; they are skipped, and so is any key a newer Megatron
# adds, so that new optional fields never break following a run.
_INT_FIELDS = {"consumed samples": "consumed_samples", "global batch size": "global_batch_size",
               "number of skipped iterations": "skipped_iterations",
               "number of nan iterations": "nan_iterations"}
_FLOAT_FIELDS = {"elapsed time per iteration (ms)": "elapsed_ms", "learning rate": "learning_rate",
                 "loss scale": "loss_scale", "grad norm": "grad_norm", "num zeros": "num_zeros",
                 "params norm": "params_norm"}
_REQUIRED = ("consumed samples", "global batch size")


def _parse_iteration(text: str, raw: str) -> IterationLine | ParseError:
    head = _ITERATION_HEAD.match(text)
    if head is None:
        return ParseError(raw, "iteration line: unexpected text before 'iteration N/M |'")
    rest = text[head.end():].strip()
    # Every complete field ends with ' |'. A line that does not end with '|' was cut short, and its last
    # field may be cut mid-value ('grad norm: 2.9' of 2.942): drop it rather than report a wrong number.
    truncated = not rest.endswith("|") and rest != ""
    fields = [f.strip() for f in rest.split("|")]
    if truncated:
        fields.pop()
    values: dict[str, int | float] = {}
    losses: dict[str, float] = {}
    # Losses are the fields between 'global batch size' and the next typed key (usually 'loss scale'):
    # their names are the loss_dict keys of the job's forward step, so they cannot be listed in advance.
    section = "before"
    for f in fields:
        if not f:
            continue
        key, sep, value = f.partition(":")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            return ParseError(raw, f"iteration line: field {f!r} is not 'name: value'")
        typed = key in _INT_FIELDS or key in _FLOAT_FIELDS
        if section == "losses" and typed:
            section = "after"
        try:
            if key in _INT_FIELDS:
                values[key] = int(value)
            elif key in _FLOAT_FIELDS:
                values[key] = float(value)      # also takes 'nan' / 'inf' as Python and Megatron print them
            elif section == "losses":
                losses[key] = float(value)
        except ValueError:
            return ParseError(raw, f"iteration line: {key!r} has a bad value {value!r}")
        if key == "global batch size":
            section = "losses"
    missing = [k for k in _REQUIRED if k not in values]
    if missing:
        why = "cut short before" if truncated else "missing"
        return ParseError(raw, f"iteration line: {why} {', '.join(repr(k) for k in missing)}")
    typed_fields = {name: values.get(key) for key, name in (_INT_FIELDS | _FLOAT_FIELDS).items()}
    return IterationLine(step=int(head["step"]), train_iters=int(head["total"]), losses=losses,
                         timestamp=head["ts"], truncated=truncated, **typed_fields)


# ---- checkpoint and exit lines ---------------------------------------------------------------------

_OPT_TS = rf"(?:\[(?P<ts>{_TS})\]\s*)?"
_BRACKETS = r"(?: \[ t [^\]]*\])?"               # '[ t 1/1, gtp_remat 1/1, p 1/1 ]': the printing rank's place
# (marker that makes a line ours, its strict form, event builder). Directories may hold spaces, so they
# are matched lazily up to the fixed text that follows them.
_CHECKPOINT_LINES = [
    ("saving checkpoint at iteration",
     re.compile(rf"{_OPT_TS}saving checkpoint at iteration\s+(?P<it>\d+) to (?P<dir>.+) in (?P<fmt>\S+) format"),
     lambda m: SaveBegin(int(m["it"]), m["dir"], m["fmt"], m["ts"])),
    ("scheduled an async checkpoint save",
     re.compile(rf"{_OPT_TS}scheduled an async checkpoint save at iteration\s+(?P<it>\d+) to (?P<dir>.+)"),
     lambda m: AsyncSaveScheduled(int(m["it"]), m["dir"], m["ts"])),
    ("successfully saved checkpoint",
     re.compile(rf"{_OPT_TS}successfully saved checkpoint from iteration\s+(?P<it>\d+) to (?P<dir>.+?)"
                rf"{_BRACKETS}"),
     lambda m: SaveDone(int(m["it"]), m["dir"], m["ts"])),
    ("successfully loaded checkpoint",
     re.compile(rf"successfully loaded checkpoint from (?P<dir>.+?){_BRACKETS} at iteration (?P<it>\d+)"),
     lambda m: LoadDone(int(m["it"]), m["dir"])),
    ("could not find the metadata file",
     re.compile(r"WARNING: could not find the metadata file (?P<path>.+)"),
     lambda m: NoCheckpoint(m["path"])),
]
_LOAD_MARK = re.compile(r"loading (?:release )?(?:distributed )?checkpoint from ")
_LOAD = re.compile(r"loading (?P<rel>release )?(?P<dist>distributed )?checkpoint from (?P<dir>.+?)"
                   r"(?: at iteration (?P<it>\d+))?")
# Milestones go through print_datetime: '[<message>] datetime: <ts> '.
_DATETIME = re.compile(rf"\[(?P<msg>.*)\] datetime: (?P<ts>{_TS})")
_AFTER_MINUTES = re.compile(r"exiting program after (?P<min>\S+) minutes")
_AT_ITERATION = re.compile(r"exiting program at iteration (?P<it>\d+)")
_FLOAT = re.compile(r"\d+(?:\.\d*)?(?:[eE][-+]?\d+)?")


def _parse_load(text: str, raw: str) -> LoadBegin | ParseError:
    m = _LOAD.fullmatch(text)
    if m is None or (m["it"] is None) != (m["rel"] is not None):
        # A release checkpoint has no iteration in its message, any other one must have it.
        return ParseError(raw, "load line: expected 'loading [release ][distributed ]checkpoint from DIR"
                               "[ at iteration N]' (iteration present exactly when not release)")
    return LoadBegin(int(m["it"]) if m["it"] else None, m["dir"], m["dist"] is not None, m["rel"] is not None)


def _parse_milestone(m: re.Match, raw: str) -> Event | None:
    msg, ts = m["msg"], m["ts"]
    if msg == "exiting program after receiving SIGTERM.":
        return ExitOnSignal(ts)
    if msg == "after training is done":
        return TrainingDone(ts)
    if it := _AT_ITERATION.fullmatch(msg):
        return ExitAtIteration(int(it["it"]), ts)
    if (mins := _AFTER_MINUTES.fullmatch(msg)) and _FLOAT.fullmatch(mins["min"]):
        return ExitAfterDuration(float(mins["min"]), ts)
    if msg.startswith("exiting program"):
        # An exit chaos cannot classify would otherwise read as a crash without a cause.
        return ParseError(raw, "exit line: not 'after receiving SIGTERM.', 'at iteration N' or 'after X minutes'")
    return None                                        # the other milestones (initialized, built, ...)


# The wrapper's lines sit inside whatever the job's logging prints around them (NVRx 0.7.0 under Megatron-LM:
# '<ts> [ERROR] [host] [workload:0(0) infra:?(?)] wrap.py:582 [<ts>] rank=0 fn_ex: ...'; 0.4.1 under chaos's trainer:
# '<ts> | ERROR | nvidia_resiliency_ext.inprocess.wrap | rank=0 fn_ex: ...'), so they are found anywhere in a line.
# Only these four of log_exc's names: the others (init_ex, health_ex, finalize_ex, ...) are always followed by
# one of them.
_WRAPPER_MARK = re.compile(r"\b(?:fn_ex|term_ex|restart_ex|exit_ex): ")
_WRAPPER = re.compile(r"\brank=(?P<rank>\d+) (?P<kind>fn_ex|term_ex|restart_ex|exit_ex): (?P<exc>.*)")
_RESTARTER_MARK = "[NestedRestarter]"
_RESTARTER = re.compile(r"\[NestedRestarter\] name=\[InProcess\] state=(?P<state>\w+)(?: stage=(?P<stage>\w+))?")


def _parse_in_process(text: str, raw: str) -> Event | None:
    if _RESTARTER_MARK in text:
        m = _RESTARTER.search(text)
        if m is None or (m["state"], m["stage"]) not in RESTARTER_STATES:
            known = ", ".join(RestarterState(state, stage).label for state, stage in RESTARTER_STATES)
            return ParseError(raw, f"in-process restarter line: expected '[NestedRestarter] name=[InProcess] "
                                   f"state=S[ stage=T]', one of: {known}")
        return RestarterState(m["state"], m["stage"])
    m = _WRAPPER.search(text)
    if m is None:
        return ParseError(raw, "in-process wrapper line: expected 'rank=N fn_ex|term_ex|restart_ex|exit_ex: EXCEPTION'")
    return WrapperLine(m["kind"], int(m["rank"]), m["exc"].strip())


def parse_line(line: str) -> Event | None:
    """The event one stdout/stderr line reports, None for the lines chaos does not follow, ParseError for a
    line that is plainly one of these formats but does not parse (format drift must be reportable)."""
    _, text = split_rank_prefix(line)
    text = text.strip()                # Megatron indents some messages and pads print_datetime's with a space
    if _RESTARTER_MARK in text or _WRAPPER_MARK.search(text):
        return _parse_in_process(text, line)
    if _ITERATION_MARK.search(text):
        return _parse_iteration(text, line)
    for marker, pattern, build in _CHECKPOINT_LINES:
        if marker in text:
            m = pattern.fullmatch(text)
            return build(m) if m else ParseError(line, f"checkpoint line: {marker!r} in an unexpected form")
    if _LOAD_MARK.match(text):
        return _parse_load(text, line)
    if (m := _DATETIME.fullmatch(text)) is not None:
        return _parse_milestone(m, line)
    if "exiting program" in text or "after training is done" in text:
        return ParseError(line, "exit line: expected '[<message>] datetime: <timestamp>'")
    return None


# ---- tracebacks ------------------------------------------------------------------------------------

_FRAME = re.compile(r'\s+File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<func>.+)')
# Indented lines that are not a frame's source: 3.11's position markers, the recursion elision note.
_NOT_SOURCE = re.compile(r"\s*(?:[~^]+|\[Previous line repeated .*\])\s*")
_EXCEPTION = re.compile(r"(?P<type>[A-Za-z_][\w.]*)(?::(?P<msg>.*))?")
_CHAINING = ("During handling of the above exception", "The above exception was the direct cause")


def _short_path(path: str) -> str:
    """The path from the package root, so that summaries read (and compare) the same on every machine."""
    if "/site-packages/" in path:
        return path.rsplit("/site-packages/", 1)[1]
    if "/megatron/" in path:
        return "megatron/" + path.split("/megatron/", 1)[1]
    return path


class TracebackReader:
    """Follows one rank's stream and turns each Python traceback into one ExceptionRaised.

    Collecting starts at 'Traceback (most recent call last):' or, when that header was lost (a clipped
    capture, a tail of the log), at a bare '  File "...", line N, in f' frame. Only the innermost frame is
    kept (memory stays flat however deep the stack). The exception line is the first non-indented line
    after the frames, not counting blank lines and the chaining notes; a chained traceback therefore gives
    one event per exception, the last being the one that ended the process. Any other line (one that does
    not look like 'Name' or 'Name: message', or is indented less than a traceback's body) ends collecting
    without an event: frames without an exception (logging's stack dumps) must not invent one."""

    def __init__(self) -> None:
        self._collecting = False
        self._frame: tuple[str, str, str] | None = None    # (file:line, function, source line)

    def feed(self, line: str) -> ExceptionRaised | None:
        _, text = split_rank_prefix(line)
        if text.strip() == "Traceback (most recent call last):":
            self._collecting, self._frame = True, None
            return None
        frame = _FRAME.fullmatch(text)
        if frame is not None:
            self._collecting = True
            self._frame = (f"{_short_path(frame['file'])}:{frame['line']}", frame["func"], "")
            return None
        if not self._collecting:
            return None
        if not text.strip() or text.startswith(_CHAINING):
            return None
        if text.startswith(("    ", "\t", "  |", "  +")):
            # Traceback body: source lines (4 spaces), position markers, exception-group structure. The
            # first source line after a frame is that frame's.
            if (self._frame is not None and not self._frame[2] and not _NOT_SOURCE.fullmatch(text)
                    and not text.lstrip().startswith(("|", "+"))):
                self._frame = (*self._frame[:2], text.strip())
            return None
        self._collecting = False
        if text[0].isspace():
            return None                # someone else's line (Megatron indents its messages by 1-2 spaces)
        exc = _EXCEPTION.fullmatch(text.strip())
        if exc is None:
            return None
        summary = text.strip()
        if self._frame is not None:
            where, func, source = self._frame
            summary += f" at {where} in {func}" + (f": {source}" if source else "")
        return ExceptionRaised(summary, exc["type"])


__all__ = ["AsyncSaveScheduled", "DETECTED", "Event", "ExceptionRaised", "ExitAfterDuration", "ExitAtIteration",
           "ExitOnSignal", "GAVE_UP", "IterationLine", "LoadBegin", "LoadDone", "NoCheckpoint", "ParseError",
           "REENTERED", "RestarterState", "SaveBegin", "SaveDone", "TracebackReader", "TrainingDone", "WrapperLine",
           "parse_line", "split_rank_prefix"]
