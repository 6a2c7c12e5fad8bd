"""A listening socket anyone who can reach it may connect to (the ranks' control socket, the agents' listener),
and the limits that keep such peers from stopping the supervisor.

Until a connection has said a hello with the run's token it is *unauthenticated*, and it costs the
supervisor something it must bound:

- time: a connection whose hello is not complete within HELLO_DEADLINE_S is dropped (a peer that sends one
  byte every few seconds holds nothing), and a hello is read only when readable, never by a blocking read;
- file descriptors: at most `cap` unauthenticated connections at once, and never one that would leave fewer
  than FD_HEADROOM descriptors for the loop's own work; beyond either a new one is accepted and closed at
  once. When the process is out of descriptors all the same (EMFILE, ENFILE) a descriptor kept in reserve
  is given up for one accept, and the connection it takes is closed: the backlog drains, the loop goes on
  and accept's error never escapes;
- memory and time per byte: chaos.control.LineReader (one line of at most MAX_LINE_BYTES, each byte
  scanned once).
"""

from __future__ import annotations

import errno
import os
import resource
import socket
import struct

HELLO_DEADLINE_S = 5.0
"""An unauthenticated connection has this long from its accept to a complete hello (a rank or an agent sends
its hello the moment it has connected)."""
ACCEPTS_PER_WAKEUP = 256
"""Connections taken per readable listener before the loop turns to its other work (a flood of connections
must not keep it in accept)."""
UNAUTHENTICATED_CAP = 64
"""Unauthenticated connections held at once, beyond the ones the run itself expects (its ranks or agents,
which may all connect in the same instant)."""

FD_HEADROOM = 24
"""Descriptors always left free for the loop's own work: a connection that would leave fewer is closed."""

_OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE)


def _descriptor_limit() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 30


class Listener:
    """A non-blocking listening socket whose accept never raises (see the module's docstring)."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.refused = 0
        """Connections closed at once: over the cap, or taken with the reserve descriptor."""
        self._reserve: int | None = _open_reserve()

    def accept(self, room: bool) -> socket.socket | None:
        """The next waiting connection (non-blocking), or None when none waits or none can be taken now. Without
        `room` (the cap on unauthenticated connections reached), each waiting connection is closed at once."""
        while True:
            try:
                sock, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return None
            except ConnectionAbortedError:
                continue  # the peer gave up before we took it
            except OSError as error:
                if error.errno in _OUT_OF_DESCRIPTORS and self._shed_one():
                    continue
                return None  # ENOBUFS, ENOMEM, or nothing to shed: tried again when the listener is readable
            # accept takes the lowest free descriptor: a number this high means fewer than FD_HEADROOM are left
            # for the loop's own work (pidfds, /proc scans, history files), which must never meet EMFILE
            if room and sock.fileno() < _descriptor_limit() - FD_HEADROOM:
                sock.setblocking(False)
                return sock
            self.refused += 1
            sock.close()

    def _shed_one(self) -> bool:
        """Out of descriptors: the reserve one is freed for one accept, whose connection is closed at once."""
        if self._reserve is None:
            return False
        os.close(self._reserve)
        self._reserve = None
        try:
            sock, _ = self.sock.accept()
        except OSError:
            self._reserve = _open_reserve()
            return False
        sock.close()  # first: its descriptor is the one the reserve takes back
        self._reserve = _open_reserve()
        self.refused += 1
        return True

    def close(self) -> None:
        self.sock.close()
        if self._reserve is not None:
            os.close(self._reserve)
            self._reserve = None


def _open_reserve() -> int | None:
    try:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


def peer_pid(sock: socket.socket) -> int | None:
    """The pid of the process that connected a Unix socket, as the kernel recorded it at connect (SO_PEERCRED:
    the peer cannot choose it); None on another kind of socket."""
    if sock.family != socket.AF_UNIX:
        return None
    try:
        pid, _, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                        struct.calcsize("3i")))
    except OSError:
        return None
    return pid if pid > 0 else None
