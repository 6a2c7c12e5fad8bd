"""The control channel between the supervisor and the probe inside each rank.

One Unix stream socket per run (path in ``CHAOS_CONTROL_SOCKET``), or a TCP one where ranks run on other
hosts (``tcp://ADDRESS:PORT``); newline-delimited JSON messages.

    rank -> supervisor   {"type": "hello", "rank": r, "pid": p, "attempt": a, "token": run token, "host": h}
    supervisor -> rank   {"type": "plan", "holds": [{"fault_id", "step", "phase", "index"}, ...]}
    rank -> supervisor   {"type": "held", "fault_id", "step", "phase", "index"}
    supervisor -> rank   {"type": "release", "fault_id", "raise"?: message}

A connection's first message must be its hello, carrying the run's token (the secret in CHAOS_RUN_TOKEN,
compared in constant time): until the hello is accepted nothing else it sends is acted on, and anything
that is not a message (a line over MAX_LINE_BYTES, bad UTF-8, not a JSON object, a field of the wrong type)
drops that connection and nothing else.

The rank keeps its connection for its whole attempt. A hold is how a fault lands *exactly*: the rank stops
at the planned point and waits; the supervisor sends the real signal from outside, then releases it
(a rank whose signal was fatal never reads the release). A release carrying ``raise`` makes the probe raise
``chaos.probe.InjectedFault(message)`` in the rank instead (the ``raise`` fault kind). The rank's attempt is
the launch's, or under ``restart.by: job`` the launch's plus its launcher's restart count plus the in-process
re-entries of its training function (rank_attempt). A rank re-entered in-process closes its connection and
says hello again, from the same pid, as the next attempt.
``step``/``index`` of None match any value.
Pure Python: imported by the supervisor, which never imports torch.
"""

from __future__ import annotations

import hmac
import json
import socket
from collections import deque
from pathlib import Path
from typing import Mapping

from chaos import history, safe_files

ENV_SOCKET = "CHAOS_CONTROL_SOCKET"
ENV_HISTORY_DIR = "CHAOS_HISTORY_DIR"
ENV_ATTEMPT = "CHAOS_ATTEMPT"
ENV_RUN_DIR = "CHAOS_RUN_DIR"
ENV_RUN_TOKEN = "CHAOS_RUN_TOKEN"
ENV_RESTARTS_BY = "CHAOS_RESTARTS_BY"
"""'job' when the job's own launcher restarts it (restart.by: job); unset when chaos does."""
ENV_LAUNCHER_RESTARTS = "TORCHELASTIC_RESTART_COUNT"
"""How many times torchrun's elastic agent has restarted the workers it now runs (0 at its first start)."""
TCP_PREFIX = "tcp://"
RUN_TOKEN_FILE = ".chaos-run-token"
"""The supervisor writes its run's token here at the start; a rank commits a checkpoint only while the run
directory still holds its token (a rank of an earlier run at the same --out never commits into a new one)."""


def rank_attempt(environ: Mapping[str, str], reentries: int = 0) -> tuple[int, str | None]:
    """This rank's attempt and history directory, from the environment the supervisor set; the one place the
    attempt numbering rule lives. Where the job recovers itself (restart.by: job) the attempt is the launch's,
    plus the restarts its launcher counted, plus `reentries`: how many times an in-process restart layer (NVRx's
    inprocess.Wrapper) re-entered the training function in this very process. Its history then goes to that
    attempt's directory (the supervisor made them all at the launch). Where chaos restarts it, neither
    happens and the environment says it all.

    Both layers at once would make the numbers collide (launcher restart 1 and re-entry 0 against launcher
    restart 0 and re-entry 1): the scenario reader refuses that (the launcher gets --max-restarts=0 when the
    workload restarts in-process), and a rank that meets it anyway raises rather than write into another
    attempt's history."""
    attempt = int(environ.get(ENV_ATTEMPT, "1"))
    directory = environ.get(ENV_HISTORY_DIR) or None
    by_job = environ.get(ENV_RESTARTS_BY) == "job"
    restarts = int(environ.get(ENV_LAUNCHER_RESTARTS, "0") or 0) if by_job else 0
    if reentries and not by_job:
        raise ValueError("an in-process re-entry is the job's own restart: chaos counts it only under restart.by: job")
    if reentries and restarts:
        raise ValueError(f"nested restart layers: launcher restart {restarts} and in-process re-entry {reentries} "
                         f"in one process would share attempt numbers with other ranks' attempts")
    run_dir = environ.get(ENV_RUN_DIR)
    if restarts + reentries > 0 and run_dir:
        attempt += restarts + reentries
        directory = str(history.attempt_dir(Path(run_dir), attempt))
    return attempt, directory


def connect(address: str) -> socket.socket:
    """A connected stream socket to the supervisor: a Unix socket path, or tcp://ADDRESS:PORT."""
    if address.startswith(TCP_PREFIX):
        host, _, port = address[len(TCP_PREFIX):].rpartition(":")
        sock = socket.create_connection((host, int(port)), timeout=30)
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(address)
    return sock


def send(sock: socket.socket, message: dict) -> None:
    sock.sendall((json.dumps(message) + "\n").encode())


MAX_LINE_BYTES = 1 << 20
"""The longest message either side accepts (a plan or a hold is a few hundred bytes): a longer line drops the
connection that sent it, after at most this much was buffered."""


class MessageError(ValueError):
    """A line that is not one JSON object of at most MAX_LINE_BYTES (bad UTF-8, nesting too deep, a list, ...):
    whoever reads it drops the connection that sent it, and nothing else."""


def parse_message(line: bytes) -> dict:
    try:
        message = json.loads(line.decode("utf-8"))  # strict UTF-8: json would guess UTF-16 from NUL bytes
    except (ValueError, RecursionError) as error:  # RecursionError: nesting deeper than the interpreter's stack
        raise MessageError(f"not a JSON message ({type(error).__name__})") from None
    if not isinstance(message, dict):
        raise MessageError(f"a JSON {type(message).__name__}, not an object")
    return message


class LineReader:
    """Buffers a stream socket into complete JSON messages (objects), each line at most `max_line_bytes`:
    safe_files.LineSplitter searches every byte for a newline once and holds at most that much of a line, so a
    peer that sends a long line in small pieces costs linear time and is cut off after `max_line_bytes`."""

    def __init__(self, sock: socket.socket, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self.sock = sock
        self._lines = safe_files.LineSplitter(max_line_bytes)
        self._pending: deque[tuple[bytes, bool]] = deque()
        """Lines split off but not yet handed out (read_message returns one at a time)."""

    def _next(self) -> dict | None:
        while self._pending:
            line, cut = self._pending.popleft()
            if cut:
                raise MessageError(f"a line longer than {self._lines.cap} bytes")
            if line.strip():
                return parse_message(line)
        return None

    def feed(self, data: bytes) -> list[dict]:
        """The complete messages `data` ends; MessageError for one that is not a message (the connection must
        then be dropped: what follows it is not read)."""
        self._pending.extend(self._lines.feed(data))
        messages = []
        while (message := self._next()) is not None:
            messages.append(message)
        return messages

    def read_message(self) -> dict | None:
        """Blocks until one message arrives; None when the peer closed."""
        while (message := self._next()) is None:
            data = self.sock.recv(65536)
            if not data:
                return None
            self._pending.extend(self._lines.feed(data))
        return message


def token_matches(offered: object, expected: str) -> bool:
    """Whether a hello's token is the run's, compared in constant time (no timing tells how much matched)."""
    return (isinstance(offered, str) and bool(expected)
            and hmac.compare_digest(offered.encode("utf-8", "surrogatepass"), expected.encode()))


def hold_matches(hold: dict, step: int | None, phase: str, index: int | None) -> bool:
    if hold["phase"] != phase:
        return False
    if hold.get("step") is not None and hold["step"] != step:
        return False
    if hold.get("index") is not None and hold["index"] != index:
        return False
    return True
