"""History: append-only JSON-lines event records, the only thing checkers read besides files on disk.

Layout of a run directory (all paths relative to it):

    supervisor.jsonl                    the supervisor's own records (launch, signal sent, exit seen, teardown)
    attempts/<NN>/rank-<r>.jsonl        what rank r did in attempt NN (written by the probe inside the rank)
    attempts/<NN>/rank-<r>.out          the rank's stdout+stderr (direct launcher) / agent-<n>.out (torchrun)

Each line is one JSON object with at least ``t`` (wall time, seconds since the epoch), ``mono``
(CLOCK_MONOTONIC seconds: system-wide, so comparable between the supervisor and the ranks on its host) and
``event``. Ranks on other hosts (hosts: cluster) write their own host's clock; `load_run_history` puts it on
the supervisor's with the offset measured for that host (`agent_hello`), keeping the raw value as
``host_mono``, so that a check never compares two hosts' raw clocks.
Rank records also carry ``rank`` and ``attempt``. Event names are the constants below; the fields each
carries are listed beside it. Each line reaches the kernel in one write(2) (no fsync): a SIGKILLed process
keeps everything it wrote, since the data is already in the kernel.

This module is pure Python on purpose: the supervisor and the checkers import it and must never pull
in torch.
"""

from __future__ import annotations

import errno
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from chaos import safe_files

# ---- rank events (written by chaos.probe) ------------------------------------------------------
START = "start"                    # pid, world_size, local_rank, host, reentry? (an in-process restart's count)
POINT = "point"                    # step, phase, index?   a probe point was reached (phase entered)
LEAVE = "leave"                    # step, phase           a phase was left
HELD = "held"                      # step, phase, index?, fault_id   the rank is held for a planned fault
RELEASED = "released"              # fault_id, raised? (the message of an exception it was made to raise)
SPARES_STARTED = "spares_started"  # attempt, pids   warm spares spawned for the next restart
BUSY = "busy"                      # what    long silent work begins (startup, hashing): not a hang yet
BUSY_END = "busy_end"              # what    it ended
STARTUP_PHASE = "startup_phase"    # phase   a start-up stage finished (imports, process_groups, model, data)
STEP_BEGIN = "step_begin"          # step
STEP_END = "step_end"              # step
METRICS = "metrics"                # step, lm_loss, grad_norm, lr, consumed_samples, data_hash?
CHECKPOINT_LOADED = "checkpoint_loaded"        # iteration (0 = fresh start), path (None on fresh start)
CHECKPOINT_REJECTED = "checkpoint_rejected"    # iteration, path, reason   (corrupt / partial)
CHECKPOINT_COMMITTED = "checkpoint_committed"  # iteration, path   (after the tracker names it)
SIGNAL_RECEIVED = "signal_received"            # signal (name), step, phase
FINAL_STATE = "final_state"        # step, state_hash
TRAIN_END = "train_end"            # step, reason: "complete" | "preempted"
JOB_INTERRUPTED = "job_interrupted"  # layer ("in_process"), kind (fn_ex|term_ex|restart_ex|exit_ex), line: the job's
                                     # in-process restart layer logged, in this rank, that it caught a failure (fn_ex),
                                     # was told to restart (term_ex), restarts (restart_ex) or gives up (exit_ex);
                                     # followed from a log also its restarter's `state=handling stage=starting` and
                                     # `state=aborted` (role: detected | gave_up)
JOB_REENTERED = "job_reentered"    # layer, kind (restart_ex | state=handling stage=completed), line: followed from
                                   # the rank's log, the job re-enters its training function in this process: the
                                   # rank's last record of the attempt (the rest of its output is the next attempt's);
                                   # every_rank: true when the line says every rank has (NVRx's restarter, rank 0)

# ---- rank events seen only from outside (written by chaos.blackbox's follower from a trainer's own lines) -----
SAVE_STARTED = "save_started"      # iteration, directory, ckpt_format
SAVE_FINISHED = "save_finished"    # iteration
EXCEPTION = "exception"            # summary, exception_type
PARSE_ERROR = "parse_error"        # line, line_number, reason: a line that looks like a known one and does not parse

# ---- supervisor events (written by chaos.supervisor) -------------------------------------------
RUN_START = "run_start"            # run_dir, launcher, host (the supervisor's), world_size, nodes, faults
ATTEMPT_START = "attempt_start"    # attempt, launcher, port, processes: [{pid, role, rank, node, warm, start
                                   # (cold|spare|fork), fork_mono? (when the zygote forked it), warm_refusal? (why a
                                   # rank that could start warm started cold)}]; by: job, in_process: true
                                   # when the job re-entered its training function in the same processes
ZYGOTE_STARTED = "zygote_started"  # pid, imports: the run's fork server (restart.warm: fork) began its imports;
                                   # attempt when it replaced one that died
RANK_HELLO = "rank_hello"          # attempt, rank, pid; carried: true for a rank of a log-followed job that re-entered
                                   # in-process (no hello comes: the same process taken over as it is)
FAULT_LANDED = "fault_landed"      # fault_id, attempt, rank, pid, step, phase, index, action, signal, held (bool);
                                   # process (launcher|rank_monitor) when it hit a process beside the rank (pid its)
STALL_ENDED = "stall_ended"        # fault_id, attempt, kind (pause|straggler|partition), ranks, stalled_s,
                                   # by: elapsed|attempt_end, and resumed: [pid] | released: [pid] | node;
                                   # outlived_attempt: it ended in a later attempt (beside the ranks, by: job)
NODE_LOST = "node_lost"            # fault_id, attempt, node, delivered, killed, survivors, files, bytes, listed,
                                   # iterations (of checkpoint directories with files on the lost disk)
FAULT_MISSED = "fault_missed"      # fault_id, reason
RANK_EXIT = "rank_exit"            # attempt, rank, pid, returncode, signal (name or None)
DEATH_DETECTED = "death_detected"  # attempt, rank, detect_latency_s
HANG_DETECTED = "hang_detected"    # attempt, idle_s
TEARDOWN = "teardown"              # attempt, duration_s, sigterm, sigkill, survivors: [pid]; by: job (the job's own),
                                   # in_process + carried: [pid] (its ranks went on as the next attempt's)
ATTEMPT_END = "attempt_end"        # attempt, outcome: complete|crashed|hung|preempted|error
REENTRIES_SPENT = "reentries_spent"  # attempt, max_restarts: the job re-entered its training function in-process
                                     # again after restart.max_restarts re-entries; chaos stopped it there
RUN_END = "run_end"                # outcome: complete|out_of_restarts|interrupted|error; restart.by: job also
                                   # job_gave_up (its launcher exited without completing) | hung
AGENT_HELLO = "agent_hello"        # attempt, node, host, pid, address, interface, port, mono_offset_s,
                                   # wall_offset_s, rtt_s: a host's agent joined (hosts: cluster), its clocks
                                   # measured against the supervisor's (offset = agent - supervisor)
SECURITY_EVENT = "security_event"  # attempt, pid, uid, command, why, node?: a process that is not the run's
                                   # (another user's) carried the run's token; never signalled, not the job's
CORRUPTED = "corrupted"            # fault_id, attempt, path, mode, iteration, ...
HOSTS = "hosts"                    # kind (netns), interface, addresses: [node 0's, ...]
SLURM = "slurm"                    # conf, nodes: the private Slurm cluster (launcher: slurm)
SLURMD_RESTARTED = "slurmd_restarted"  # attempt, nodes: lost nodes' slurmd started again before the attempt
OBSERVED = "observed"              # attempt, phase, step, index, path, tracker: a checkpoint-directory event
                                   # seen by the black-box follower (log-observed workloads)
OBSERVER = "observer"              # attempt, watch_mode, fallback_reason: how the checkpoint directory is watched
LIFELINE = "lifeline"              # cgroup (path or None), reason, fallback: how nothing outlives the supervisor
AGENT_EXIT = "agent_exit"          # attempt, node, pid, returncode, signal
RANK_REJECTED = "rank_rejected"    # attempt, rank, pid, reason   (a hello we could not verify)
CLUSTER = "cluster"                # controller, agents, control: where an existing cluster's nodes reach chaos
AGENT_REFUSED = "agent_refused"    # attempt, reason: a connection to the agent listener that was not let in
AGENT_LOST = "agent_lost"          # attempt, node, host, reason: an agent's link broke during the attempt
JOB_RECOVERY = "job_recovery"      # attempt, node, kind (detected|restarting|stopping|heartbeat_missed), line: by: job, what the
                                   # job's launcher said of its own recovery, stamped when chaos read it


class HistoryWriter:
    """Appends one JSON object per line, each line with a single write(2) on an O_APPEND descriptor.

    No lock and no Python-level buffer on purpose: a trainer's signal handler may write (the GPT-3
    workload's SIGTERM handler calls probe.signal_received) while the interrupted code is itself inside a
    write. With a lock that would deadlock (an RLock does not help: the buffered file is not reentrant);
    with one write per complete line, the handler's line simply lands before the interrupted one, both
    whole. A kill never loses a written record, since every line is in the kernel once write returns."""

    def __init__(self, path: Path, **constant_fields: Any) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._constant_fields = constant_fields
        # O_NOFOLLOW: a link planted under a history's name must not redirect the writes (chaos runs as root)
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                                       0o644)

    def write(self, event: str, **fields: Any) -> dict:
        record = {"t": time.time(), "mono": time.monotonic(), "event": event, **self._constant_fields, **fields}
        if self._fd is None:
            raise ValueError(f"history {self.path} is closed")
        # A short write happens only when the disk is full; the torn line it leaves is dropped by read_jsonl.
        os.write(self._fd, (json.dumps(record, default=str) + "\n").encode())
        return record

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


HISTORY_FILE_LIMIT = 2 << 30
"""The largest history file read (bytes): far beyond a real run's, far below what would exhaust memory. A
larger one is reported as damage (the run cannot be judged from part of it), never a MemoryError."""
HISTORY_LINE_LIMIT = 16 << 20
"""The longest history line read (bytes); a longer one is a damaged record, skipped without being held."""


def read_jsonl(path: Path) -> list[dict]:
    """Reads a history file; a torn last line (the writer was killed mid-write) is dropped, not fatal."""
    return read_jsonl_checked(path)[0]


def read_jsonl_checked(path: Path, root: Path | None = None) -> tuple[list[dict], list[int | str]]:
    """(records, numbers of damaged lines). A torn last line without its newline is what a killed writer
    leaves and is dropped quietly; any other line that is not UTF-8 JSON of an object is damage, reported
    by number, so that checks never judge a history with holes as if it were whole.

    A run directory may come from someone else (`chaos report DIR`): the file is read as untrusted input,
    line by line (never whole into memory), without following a link (nor, below `root`, a linked
    directory), only if it is a regular file of at most HISTORY_FILE_LIMIT bytes; a file that is not is
    one damaged entry saying why (a string instead of a line number)."""
    records: list[dict] = []
    damaged: list[int | str] = []
    try:
        fd = safe_files.open_regular(path, root)
    except safe_files.UnsafeFile as error:
        if error.errno != errno.ENOENT:
            damaged.append(str(error).removeprefix(f"{path}: "))
        return records, damaged
    with os.fdopen(fd, "rb") as handle:
        size = os.fstat(fd).st_size
        if size > HISTORY_FILE_LIMIT:
            damaged.append(f"{size} bytes, more than the {HISTORY_FILE_LIMIT} bytes chaos reads from a history")
            return records, damaged
        lines = safe_files.LineSplitter(HISTORY_LINE_LIMIT)
        number, read = 0, 0
        while read <= HISTORY_FILE_LIMIT:  # it may grow while read (a live run): never past the limit
            block = handle.read(1 << 20)
            if not block:
                break
            read += len(block)
            for raw, cut in lines.feed(block):
                number += 1
                _parse_line(raw, cut, number, records, damaged)
        if read > HISTORY_FILE_LIMIT:
            damaged.append(f"grew past {HISTORY_FILE_LIMIT} bytes while being read")
        # the last piece has no newline after it: a torn write, not damage
    return records, damaged


def _parse_line(raw: bytes, cut: bool, number: int, records: list[dict], damaged: list[int | str]) -> None:
    if cut:
        damaged.append(number)  # longer than HISTORY_LINE_LIMIT: no record of ours is
        return
    if not raw.strip():
        return
    try:
        record = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: nested thousands deep
        record = None
    if isinstance(record, dict) and isinstance(record.get("event"), str):
        records.append(record)
    else:
        damaged.append(number)


def attempt_dir(run_dir: Path, attempt: int) -> Path:
    return Path(run_dir) / "attempts" / f"{attempt:02d}"


def rank_history_path(run_dir: Path, attempt: int, rank: int) -> Path:
    return attempt_dir(run_dir, attempt) / f"rank-{rank}.jsonl"


def supervisor_history_path(run_dir: Path) -> Path:
    return Path(run_dir) / "supervisor.jsonl"


@dataclass
class AttemptHistory:
    index: int
    ranks: dict[int, list[dict]] = field(default_factory=dict)

    def events(self, event: str, rank: int | None = None) -> Iterator[dict]:
        for r, records in sorted(self.ranks.items()):
            if rank is not None and r != rank:
                continue
            for record in records:
                if record["event"] == event:
                    yield record


@dataclass
class RunHistory:
    run_dir: Path
    supervisor: list[dict]
    attempts: list[AttemptHistory]
    damaged: list[str] = field(default_factory=list)
    """'attempts/01/rank-0.jsonl line 57' for each line that could not be read (see read_jsonl_checked)."""

    def supervisor_events(self, event: str) -> list[dict]:
        return [r for r in self.supervisor if r["event"] == event]


_RANK_FILE = re.compile(r"rank-([0-9]+)\.jsonl")


def load_run_history(run_dir: Path) -> RunHistory:
    run_dir = Path(run_dir)
    attempts = []
    damaged: list[str] = []

    def note(name: str, bad: list[int | str]) -> None:
        damaged.extend(f"{name} line {n}" if isinstance(n, int) else f"{name}: {n}" for n in bad)

    root = run_dir / "attempts"
    if root.is_dir() and not root.is_symlink():
        for entry in sorted(root.iterdir(), key=lambda p: p.name):
            # a linked attempt directory would take the history from elsewhere: it is not one of this run's
            if entry.is_symlink() or not entry.is_dir() or not re.fullmatch(r"[0-9]+", entry.name):
                continue
            attempt = AttemptHistory(index=int(entry.name))
            for file in entry.iterdir():
                match = _RANK_FILE.fullmatch(file.name)
                if match:
                    attempt.ranks[int(match.group(1))], bad = read_jsonl_checked(file, root=run_dir)
                    note(safe_files.one_line(file.relative_to(run_dir)), bad)
            attempts.append(attempt)
    attempts.sort(key=lambda a: a.index)
    supervisor, bad = read_jsonl_checked(supervisor_history_path(run_dir), root=run_dir)
    note("supervisor.jsonl", bad)
    # restart.by: job makes every attempt's directory at the launch (the job's restarted ranks write there):
    # one the job never came to is not an attempt
    started = {record.get("attempt") for record in supervisor if record.get("event") == ATTEMPT_START}
    attempts = [a for a in attempts if a.ranks or a.index in started]
    _onto_supervisor_clock(attempts, supervisor)
    return RunHistory(run_dir=run_dir, supervisor=supervisor, attempts=attempts, damaged=sorted(damaged))


def _onto_supervisor_clock(attempts: list[AttemptHistory], supervisor: list[dict]) -> None:
    """Rank records written on another host: `mono` on the supervisor's clock (mono - that host's offset in
    that attempt), the host's own value kept as `host_mono`. A rank's host is the one its `start` names."""
    offsets = {(record.get("attempt"), record.get("host")): float(record["mono_offset_s"])
               for record in supervisor if record.get("event") == AGENT_HELLO and "mono_offset_s" in record}
    if not offsets:
        return
    for attempt in attempts:
        for records in attempt.ranks.values():
            host = next((r.get("host") for r in records if r.get("event") == START), None)
            offset = offsets.get((attempt.index, host))
            if offset is None:
                continue
            for record in records:
                if isinstance(record.get("mono"), (int, float)) and "host_mono" not in record:
                    record["host_mono"] = record["mono"]
                    record["mono"] = record["mono"] - offset
