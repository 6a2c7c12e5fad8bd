"""The supervisor's side of chaos.control: one listening Unix socket per run, one connection per rank.

The socket file always lives inside the run directory. A Unix socket path must fit in ~108 bytes; when
`<run_dir>/control.sock` would be longer, the server binds and the ranks connect through
`/proc/<supervisor pid>/fd/<fd of the run dir>/control.sock`: the same file in the same directory, reached
by a path of ~40 characters that stays valid exactly as long as the supervisor lives (which is as long as
ranks may connect).

Ranks on other hosts (hosts: cluster) cannot reach a Unix socket: there the server listens on TCP
(`tcp://ADDRESS:PORT` in CHAOS_CONTROL_SOCKET) and a hello must carry the run's token.
"""

from __future__ import annotations

import os
import selectors
import socket
from dataclasses import dataclass, field
from pathlib import Path

from chaos import control

SOCKET_NAME = "control.sock"
MAX_SOCKET_PATH = 100


@dataclass
class Connection:
    sock: socket.socket
    reader: control.LineReader
    rank: int | None = None  # set once its hello is verified
    closed: bool = False

    def send(self, message: dict) -> bool:
        """False when the rank is gone (a dead or dying rank never fails the supervisor)."""
        if self.closed:
            return False
        try:
            control.send(self.sock, message)
            return True
        except OSError:
            return False


@dataclass
class ControlServer:
    run_dir: Path
    path: str = ""
    listener: socket.socket | None = None
    connections: dict[int, Connection] = field(default_factory=dict)  # by socket fileno
    selector: selectors.BaseSelector | None = None
    """Connections are registered here by the supervisor; dropped ones are unregistered before closing."""
    _dir_fd: int | None = None
    tcp: bool = False
    """Listening on TCP: hellos are checked against the run token (anyone on the network may connect)."""

    def start_tcp(self, bind_address: str) -> str:
        """Listens on TCP at `bind_address` (a port the kernel picks); returns what ranks connect to."""
        listener = socket.create_server((bind_address, 0), backlog=256)
        listener.setblocking(False)
        self.listener, self.tcp = listener, True
        self.path = f"{control.TCP_PREFIX}{bind_address}:{listener.getsockname()[1]}"
        return self.path

    def start(self) -> str:
        """Binds the socket; returns the path ranks connect to (for CHAOS_CONTROL_SOCKET)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        file_path = self.run_dir.resolve() / SOCKET_NAME
        if file_path.exists() or file_path.is_symlink():
            file_path.unlink()
        if len(str(file_path)) < MAX_SOCKET_PATH:
            self.path = str(file_path)
        else:
            self._dir_fd = os.open(self.run_dir, os.O_PATH | os.O_DIRECTORY)
            self.path = f"/proc/{os.getpid()}/fd/{self._dir_fd}/{SOCKET_NAME}"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.path)
        listener.listen(256)
        listener.setblocking(False)
        self.listener = listener
        return self.path

    def accept(self) -> Connection | None:
        assert self.listener is not None
        try:
            sock, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return None
        sock.setblocking(False)
        if self.tcp:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # a hold's answer must not wait 40 ms
        connection = Connection(sock=sock, reader=control.LineReader(sock))
        self.connections[sock.fileno()] = connection
        return connection

    def receive(self, connection: Connection) -> list[dict]:
        """The complete messages now readable; marks the connection closed at EOF."""
        try:
            data = connection.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return []
        except OSError:
            data = b""
        if not data:
            self.drop(connection)
            return []
        try:
            return connection.reader.feed(data)
        except ValueError:
            self.drop(connection)
            return []

    def drop(self, connection: Connection) -> None:
        if connection.closed:
            return
        connection.closed = True
        if self.selector is not None:
            try:
                self.selector.unregister(connection.sock)
            except (KeyError, ValueError):
                pass
        self.connections.pop(connection.sock.fileno(), None)
        connection.sock.close()

    def drop_all(self) -> None:
        for connection in list(self.connections.values()):
            self.drop(connection)

    def close(self) -> None:
        self.drop_all()
        if self.listener is not None:
            if self.selector is not None:
                try:
                    self.selector.unregister(self.listener)
                except (KeyError, ValueError):
                    pass
            self.listener.close()
            self.listener = None
        try:
            (self.run_dir / SOCKET_NAME).unlink()
        except FileNotFoundError:
            pass
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None
