"""The supervisor's side of chaos.control: one listening Unix socket per run, one connection per rank.

The socket file always lives inside the run directory. A Unix socket path must fit in ~108 bytes; when
`<run_dir>/control.sock` would be longer, the server binds and the ranks connect through
`/proc/<supervisor pid>/fd/<fd of the run dir>/control.sock`: the same file in the same directory, reached
by a path of ~40 characters that stays valid exactly as long as the supervisor lives (which is as long as
ranks may connect).

Ranks on other hosts (hosts: cluster) cannot reach a Unix socket: there the server listens on TCP
(`tcp://ADDRESS:PORT` in CHAOS_CONTROL_SOCKET), on the address the cluster's nodes reach this host by.

Either way a connection's hello must carry the run's token before anything it sends is acted on, and the
limits of chaos.supervisor.listener hold (a hello deadline, a cap on connections without one, accept errors
kept in). Who a rank is comes from the kernel, not from its hello: on the Unix socket the pid that connected
(SO_PEERCRED); on TCP the pid the agent on the rank's host finds holding the connection's socket.
"""

from __future__ import annotations

import os
import selectors
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from chaos import control
from chaos.errors import InfrastructureError
from chaos.supervisor import listener as listening

SOCKET_NAME = "control.sock"
MAX_SOCKET_PATH = 100


@dataclass
class Connection:
    sock: socket.socket
    reader: control.LineReader
    rank: int | None = None  # set once its hello is verified
    closed: bool = False
    peer_pid: int | None = None
    """Unix socket: the pid that connected, from the kernel (SO_PEERCRED); a hello saying another is refused."""
    peer: tuple[str, int] | None = None
    """TCP: the rank's end of the connection (address, port), as this host sees it."""
    local: tuple[str, int] | None = None
    """TCP: this end (the address and port the rank connected to)."""
    deadline_mono: float = 0.0
    """Dropped if still without an accepted hello at this time (listener.HELLO_DEADLINE_S after its accept)."""

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
    """Listening on TCP (hosts: cluster): anyone on the network may connect."""
    expected: int = 0
    """Connections the run itself makes at once (its ranks): allowed on top of listener.UNAUTHENTICATED_CAP."""
    rejected: list[str] = field(default_factory=list)
    """Why connections were dropped before an accepted hello (the first few; `rejected_count` counts all)."""
    rejected_count: int = 0
    _guard: listening.Listener | None = None

    def start_tcp(self, bind_address: str = "127.0.0.1") -> str:
        """Listens on TCP at `bind_address` (a port the kernel picks); returns what ranks connect to."""
        listener = socket.create_server((bind_address, 0), backlog=256)
        self.listener, self.tcp = listener, True
        self._guard = listening.Listener(listener)
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
        os.chmod(self.path, 0o600)  # connecting needs write permission: only our user (ranks run as it) may
        listener.listen(256)
        self.listener = listener
        self._guard = listening.Listener(listener)
        return self.path

    def short_dir(self, name: str, room: int) -> str:
        """A directory of the run dir (made here) by a path with `room` bytes to spare under the socket limit
        (ft_launcher's longest name, `/_ft_launcher<pid>_to_rmon.socket`, takes 35):
        for sockets others bind in it (ft_launcher's rank monitors under TMPDIR), by the same /proc path as
        the control socket where the plain path is too long."""
        directory = self.run_dir.resolve() / name
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:
            pass
        if directory.is_symlink() or not directory.is_dir():
            # the run dir is the job's too: a link planted there would send the sockets elsewhere
            raise InfrastructureError(f"{directory} is not a directory of the run (a link or a file)")
        if len(str(directory)) + room < MAX_SOCKET_PATH:
            return str(directory)
        if self._dir_fd is None:
            self._dir_fd = os.open(self.run_dir, os.O_PATH | os.O_DIRECTORY)
        return f"/proc/{os.getpid()}/fd/{self._dir_fd}/{name}"

    def unauthenticated(self) -> list[Connection]:
        return [c for c in self.connections.values() if c.rank is None and not c.closed]

    def accept(self) -> Connection | None:
        """The next waiting connection, or None when none waits. Over the cap on connections without a hello,
        a new one is closed at once; accept's errors (out of descriptors included) never escape."""
        assert self._guard is not None
        room = len(self.unauthenticated()) < listening.UNAUTHENTICATED_CAP + self.expected
        sock = self._guard.accept(room)
        if sock is None:
            return None
        connection = Connection(sock=sock, reader=control.LineReader(sock),
                                deadline_mono=time.monotonic() + listening.HELLO_DEADLINE_S)
        if self.tcp:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # a hold's answer must not wait 40 ms
            try:
                connection.peer, connection.local = sock.getpeername()[:2], sock.getsockname()[:2]
            except OSError:  # already gone
                sock.close()
                return self.accept()
        else:
            connection.peer_pid = listening.peer_pid(sock)
        self.connections[sock.fileno()] = connection
        return connection

    def reject(self, connection: Connection, why: str) -> None:
        """Drops a connection that has not (or not validly) said hello; the first few reasons are kept."""
        self.rejected_count += 1
        if len(self.rejected) < 10:
            self.rejected.append(why)
        self.drop(connection)

    def overdue(self, now: float) -> list[Connection]:
        """Connections still without an accepted hello past their deadline."""
        return [c for c in self.unauthenticated() if now >= c.deadline_mono]

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
        except control.MessageError as error:
            if connection.rank is None:
                self.reject(connection, str(error))
            else:
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
            if self._guard is not None:
                self._guard.close()
                self._guard = None
            else:
                self.listener.close()
            self.listener = None
        try:
            (self.run_dir / SOCKET_NAME).unlink()
        except FileNotFoundError:
            pass
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None
