"""The control channel between the supervisor and the probe inside each rank.

One Unix stream socket per run (path in ``CHAOS_CONTROL_SOCKET``), or a TCP one where ranks run on other
hosts (``tcp://ADDRESS:PORT``); newline-delimited JSON messages.

    rank -> supervisor   {"type": "hello", "rank": r, "pid": p, "attempt": a, "token": run token, "host": h}
    supervisor -> rank   {"type": "plan", "holds": [{"fault_id", "step", "phase", "index"}, ...]}
    rank -> supervisor   {"type": "held", "fault_id", "step", "phase", "index"}
    supervisor -> rank   {"type": "release", "fault_id"}

The rank keeps its connection for its whole life. A hold is how a fault lands *exactly*: the rank stops
at the planned point and waits; the supervisor sends the real signal from outside, then releases it
(a rank whose signal was fatal never reads the release). ``step``/``index`` of None match any value.
Pure Python: imported by the supervisor, which never imports torch.
"""

from __future__ import annotations

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


class LineReader:
    """Buffers a stream socket into complete JSON messages."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = b""

    def feed(self, data: bytes) -> list[dict]:
        self._buffer += data
        messages = []
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            if line.strip():
                messages.append(json.loads(line))
        return messages

    def read_message(self) -> dict | None:
        """Blocks until one message arrives; None when the peer closed."""
        while True:
            while b"\n" in self._buffer:
                line, self._buffer = self._buffer.split(b"\n", 1)
                if line.strip():
                    return json.loads(line)
            data = self.sock.recv(65536)
            if not data:
                return None
            self._buffer += data


def hold_matches(hold: dict, step: int | None, phase: str, index: int | None) -> bool:
    if hold["phase"] != phase:
        return False
    if hold.get("step") is not None and hold["step"] != step:
        return False
    if hold.get("index") is not None and hold["index"] != index:
        return False
    return True
