"""The control channel between the supervisor and the probe inside each rank.

One Unix stream socket per run (path in ``CHAOS_CONTROL_SOCKET``), or a TCP one where ranks run on other
hosts (``tcp://ADDRESS:PORT``); newline-delimited JSON messages.

    rank -> supervisor   {"type": "hello", "rank": r, "pid": p, "attempt": a, "token": run token, "host": h}
    supervisor -> rank   {"type": "plan", "holds": [{"fault_id", "step", "phase", "index"}, ...]}
    rank -> supervisor   {"type": "held", "fault_id", "step", "phase", "index"}
    supervisor -> rank   {"type": "release", "fault_id"}

A connection's first message must be its hello, carrying the run's token (the secret in CHAOS_RUN_TOKEN,
compared in constant time): until the hello is accepted nothing else it sends is acted on, and anything
that is not a message (a line over MAX_LINE_BYTES, bad UTF-8, not a JSON object, a field of the wrong type)
drops that connection and nothing else.

The rank keeps its connection for its whole life. A hold is how a fault lands *exactly*: the rank stops
at the planned point and waits; the supervisor sends the real signal from outside, then releases it
(a rank whose signal was fatal never reads the release). ``step``/``index`` of None match any value.
Pure Python: imported by the supervisor, which never imports torch.
"""

from __future__ import annotations

import hmac
import json
import socket

ENV_SOCKET = "CHAOS_CONTROL_SOCKET"
ENV_HISTORY_DIR = "CHAOS_HISTORY_DIR"
ENV_ATTEMPT = "CHAOS_ATTEMPT"
ENV_RUN_DIR = "CHAOS_RUN_DIR"
ENV_RUN_TOKEN = "CHAOS_RUN_TOKEN"
TCP_PREFIX = "tcp://"
RUN_TOKEN_FILE = ".chaos-run-token"
"""The supervisor writes its run's token here at the start; a rank commits a checkpoint only while the run
directory still holds its token (a rank of an earlier run at the same --out never commits into a new one)."""


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
    """Buffers a stream socket into complete JSON messages (objects), each line at most `max_line_bytes`.

    Every byte is searched for a newline once (the search resumes where the last one stopped), so a peer that
    sends a long line in small pieces costs linear time, and it is cut off after `max_line_bytes`."""

    def __init__(self, sock: socket.socket, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self.sock = sock
        self.max_line_bytes = max_line_bytes
        self._buffer = bytearray()
        self._start = 0
        """Where the next line begins in _buffer."""
        self._scanned = 0
        """_buffer[_start:_scanned] holds no newline."""

    def _append(self, data: bytes) -> None:
        if self._start:  # what was read already goes: the buffer holds at most one partial line
            del self._buffer[:self._start]
            self._scanned -= self._start
            self._start = 0
        self._buffer += data

    def _next_line(self) -> bytes | None:
        end = self._buffer.find(b"\n", self._scanned)
        if end < 0:
            self._scanned = len(self._buffer)
            if self._scanned - self._start > self.max_line_bytes:
                raise MessageError(f"a line longer than {self.max_line_bytes} bytes")
            return None
        if end - self._start > self.max_line_bytes:
            raise MessageError(f"a line longer than {self.max_line_bytes} bytes")
        line = bytes(self._buffer[self._start:end])
        self._start = self._scanned = end + 1
        return line

    def feed(self, data: bytes) -> list[dict]:
        """The complete messages `data` ends; MessageError for one that is not a message (the connection must
        then be dropped: what follows it is not read)."""
        self._append(data)
        messages = []
        while (line := self._next_line()) is not None:
            if line.strip():
                messages.append(parse_message(line))
        return messages

    def read_message(self) -> dict | None:
        """Blocks until one message arrives; None when the peer closed."""
        while True:
            while (line := self._next_line()) is not None:
                if line.strip():
                    return parse_message(line)
            data = self.sock.recv(65536)
            if not data:
                return None
            self._append(data)


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
