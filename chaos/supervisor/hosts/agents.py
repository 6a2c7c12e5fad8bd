"""The controller's side of chaos.agent: a TCP listener the agents dial (one per host, each attempt), a link
per agent, and `RemoteProcess`, a rank on another host as the attempt loop sees it.

The attempt loop treats a remote rank like a local one: its `pidfd` is the read end of a pipe that becomes
readable when the agent reports the rank's exit (so the same selector wakes for it), and `send` asks the
agent to deliver the signal through its own pidfd. Only the agent ever signals a rank on its host; the
controller never touches a pid of another host's process table (the same number names nothing, or
something else, here).

Each agent's clock is measured against the controller's at its hello (chaos.agent.protocol) and recorded
(`agent_hello`: mono_offset_s, wall_offset_s, rtt_s); the history loader puts ranks' monotonic times on
the controller's clock with these offsets, so that no check compares two hosts' raw clocks.
"""

from __future__ import annotations

import ipaddress
import json
import os
import select
import selectors
import socket
import time
from dataclasses import dataclass, field
from typing import Callable

from chaos import control, safe_files
from chaos.agent import protocol
from chaos.supervisor import listener as listening

REQUEST_TIMEOUT_S = 30.0
"""An agent that does not answer an order in this long is lost (its host hangs, or its link is cut)."""


class AgentLost(RuntimeError):
    pass


@dataclass(frozen=True)
class AgentInfo:
    node: int
    host: str
    pid: int
    address: str
    """The address the agent's host reached the controller from: node 0's is the job's MASTER_ADDR."""
    interface: str | None
    port: int
    """A TCP port that was free on the agent's host at its hello: node 0's is the job's MASTER_PORT."""
    mono_offset_s: float
    """agent CLOCK_MONOTONIC - controller CLOCK_MONOTONIC, within +-rtt_s/2"""
    wall_offset_s: float
    rtt_s: float
    job_id: str | None = None
    """The Slurm job the agent runs in: the attempt's ranks step joins it (srun --jobid --overlap)."""
    swept: tuple[dict, ...] = ()
    """Processes of the run the agent found (and killed) on its host before starting anything."""
    strangers: tuple[dict, ...] = ()
    """Processes of other users carrying the run's token the agent found there then (never signalled)."""


class RemoteProcess:
    """A rank (or a torchrun agent) on another host, owned by chaos's agent there: what the attempt loop
    uses of a TrackedProcess."""

    remote = True
    popen = None
    warm = False
    start = "cold"
    fork_mono = None
    warm_refusal = None
    status_file = None
    create_time = -1.0  # never a local process's: the local /proc scans (descendants, groups) skip it

    def __init__(self, link: "AgentLink", pid: int, rank: int | None, node: int, role: str = "rank") -> None:
        self.link = link
        self.role = role
        """rank, or agent: a torchrun agent on that host (launcher: torchrun), whose workers are adopted"""
        self.pid = pid
        self.rank = rank
        self.node = node
        self.exited = False
        self.exit_mono: float | None = None
        self.last_signal: str | None = None
        self.last_signal_mono: float | None = None
        self.returncode: int | None = None
        self.signal: str | None = None
        self.reported = False
        self._read_fd, self._write_fd = os.pipe()
        self.pidfd: int | None = self._read_fd
        """Readable once the agent has reported the exit (or the agent is lost): the attempt's selector watches it."""

    def report_exit(self, returncode: int | None, signal_name: str | None) -> None:
        if self.reported:
            return
        self.reported = True
        self.returncode, self.signal = returncode, signal_name
        if self._write_fd is not None:
            os.write(self._write_fd, b"x")

    def alive(self) -> bool:
        return not self.exited and not self.reported

    def exit_status(self) -> tuple[int | None, str | None]:
        return self.returncode, self.signal

    def mark_exited(self, now: float) -> None:
        if not self.exited:
            self.exited = True
            self.exit_mono = now

    def send(self, signal_name: str) -> bool:
        if not self.alive():
            return False
        try:
            delivered = bool(self.link.request({"type": "signal", "pid": self.pid, "signal": signal_name})
                             .get("delivered"))
        except AgentLost:
            return False
        if delivered:
            self.last_signal, self.last_signal_mono = signal_name, time.monotonic()
        return delivered

    def send_group(self, signal_name: str) -> bool:
        return self.send(signal_name)

    def reap(self) -> None:
        self.close()

    def close(self) -> None:
        for name in ("_read_fd", "_write_fd"):
            fd = getattr(self, name)
            if fd is not None:
                os.close(fd)
                setattr(self, name, None)
        self.pidfd = None


@dataclass
class AgentLink:
    sock: socket.socket
    reader: control.LineReader
    info: AgentInfo | None = None
    processes: dict[int, RemoteProcess] = field(default_factory=dict)
    lost: str | None = None
    _next_id: int = 0
    _replies: dict[int, dict] = field(default_factory=dict)

    # ---- messages ------------------------------------------------------------------------------------
    def send(self, message: dict) -> int:
        if self.lost:
            raise AgentLost(self.lost)
        self._next_id += 1
        try:
            control.send(self.sock, {**message, "id": self._next_id})
        except OSError as error:
            self._lose(f"sending to it failed: {error}")
            raise AgentLost(self.lost) from error
        return self._next_id

    def wait_reply(self, request: int, timeout_s: float = REQUEST_TIMEOUT_S) -> dict:
        deadline = time.monotonic() + timeout_s
        while request not in self._replies:
            left = deadline - time.monotonic()
            if left <= 0:
                self._lose(f"no answer in {timeout_s:.0f} s")
            if self.lost:
                raise AgentLost(self.lost)
            readable, _, _ = select.select([self.sock], [], [], left)
            if readable:
                self.pump()
        return self._replies.pop(request)

    def request(self, message: dict, timeout_s: float = REQUEST_TIMEOUT_S) -> dict:
        return self.wait_reply(self.send(message), timeout_s)

    def pump(self) -> None:
        """Reads what has arrived (never blocks): replies are kept for their request, exits reach their rank."""
        try:
            data = self.sock.recv(65536, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            self._lose(f"its connection broke: {error}")
            return
        if not data:
            self._lose("it closed its connection")
            return
        try:
            messages = self.reader.feed(data)
        except control.MessageError as error:
            self._lose(f"it sent something that is not a message: {error}")
            return
        for message in messages:
            if message.get("type") == "exit":
                pid, returncode, signal_name = message.get("pid"), message.get("returncode"), message.get("signal")
                process = self.processes.get(pid) if _is_int(pid) else None
                if process is not None:
                    process.report_exit(returncode if _is_int(returncode) else None,
                                        signal_name if isinstance(signal_name, str) else None)
            elif message.get("type") == "reply" and _is_int(message.get("id")):
                self._replies[message["id"]] = message

    def _lose(self, why: str) -> None:
        """The agent is gone (its host died, or the link): its ranks count as exited, how is unknown."""
        if self.lost is None:
            self.lost = why
            for process in self.processes.values():
                process.report_exit(None, None)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def measure_clock(link: AgentLink, samples: int = protocol.CLOCK_SAMPLES) -> tuple[protocol.ClockSample, float]:
    """(the tightest monotonic-clock sample, the wall-clock offset from the same exchange)."""
    taken: list[tuple[protocol.ClockSample, float]] = []
    for _ in range(samples):
        sent_mono, sent_wall = time.monotonic(), time.time()
        reply = link.request({"type": "clock"}, timeout_s=10.0)
        received_mono, received_wall = time.monotonic(), time.time()
        mono, wall = reply.get("mono"), reply.get("wall")
        if not all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in (mono, wall)):
            link._lose(f"its clock reply is not two numbers: {safe_files.one_line(reply, 200)}")
            raise AgentLost(link.lost)
        sample = protocol.ClockSample(sent_mono, received_mono, float(mono))
        taken.append((sample, float(wall) - (sent_wall + received_wall) / 2))
    best = protocol.best_offset([sample for sample, _ in taken])
    return best, next(wall for sample, wall in taken if sample is best)


class AgentServer:
    """The listener agents dial, for the whole run (agents are new every attempt). Bound to the address the
    cluster's nodes reach this host by (hosts: cluster needs the network); anyone there may connect, so a
    connection's hello is read without ever blocking the loop, within listener.HELLO_DEADLINE_S, and it is
    acted on only with the run's token (chaos.supervisor.listener has the other limits)."""

    MAX_REASONS = 20
    """Refusals kept for the history per gather (the rest are counted): a flood of connections must not
    become a flood of records."""

    def __init__(self, token: str, bind_address: str = "127.0.0.1", run_id: str = "") -> None:
        self.token = token
        self.run_id = run_id
        """The run's public name, told to each agent it welcomes (its cgroup's name)."""
        sock = socket.create_server((bind_address, 0), backlog=256)
        self.guard = listening.Listener(sock)
        self.listener = sock
        self.address = f"{bind_address}:{sock.getsockname()[1]}"

    def gather(self, nodes: int, attempt: int, timeout_s: float,
               give_up: Callable[[], str | None]) -> tuple[dict[int, AgentLink], list[str]]:
        """Accepts agents until one per node of `attempt` has said hello with the run's token (clocks measured), the
        timeout passes, or `give_up` says why to stop (srun died, Ctrl-C). Returns (links by node, the
        reasons connections were refused)."""
        links: dict[int, AgentLink] = {}
        refused: list[str] = []
        dropped = 0
        deadline = time.monotonic() + timeout_s
        selector = selectors.DefaultSelector()  # not select.select: no limit on descriptor numbers
        selector.register(self.listener, selectors.EVENT_READ, None)
        pending: dict[socket.socket, float] = {}  # each connection without a hello yet -> its deadline

        def refuse(link: AgentLink, why: str) -> None:
            nonlocal dropped
            if pending.pop(link.sock, None) is not None:
                selector.unregister(link.sock)
            link.close()
            if len(refused) < self.MAX_REASONS:
                refused.append(why)
            else:
                dropped += 1

        try:
            while len(links) < nodes and time.monotonic() < deadline and give_up() is None:
                for key, _ in selector.select(0.05):
                    if key.data is None:
                        for _ in range(listening.ACCEPTS_PER_WAKEUP):
                            sock = self.guard.accept(len(pending) < listening.UNAUTHENTICATED_CAP + nodes)
                            if sock is None:
                                break
                            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                            pending[sock] = time.monotonic() + listening.HELLO_DEADLINE_S
                            selector.register(sock, selectors.EVENT_READ, AgentLink(sock, control.LineReader(sock)))
                        continue
                    link = key.data
                    if link.sock not in pending:
                        continue
                    hello, problem = self._read_hello(link)
                    if problem is not None:
                        refuse(link, problem)
                    elif hello is not None:
                        pending.pop(link.sock)
                        selector.unregister(link.sock)
                        link.sock.setblocking(True)  # an authenticated agent's link: requests wait for replies
                        problem = self._welcome(link, hello, nodes, attempt, links)
                        if problem is not None:
                            refuse(link, problem)
                        else:
                            links[link.info.node] = link
                now = time.monotonic()
                for sock, hello_deadline in list(pending.items()):
                    if now >= hello_deadline:
                        refuse(selector.get_key(sock).data,
                               f"a connection that sent no hello within {listening.HELLO_DEADLINE_S:.0f} s")
        finally:
            for sock in pending:
                sock.close()
            selector.close()
        dropped += self.guard.refused
        self.guard.refused = 0
        if dropped:
            refused.append(f"{dropped} more connection(s) refused (over the limits, or without a valid hello)")
        return links, refused

    @staticmethod
    def _read_hello(link: AgentLink) -> tuple[dict | None, str | None]:
        """(its hello, None) once complete, (None, None) while incomplete, (None, why) to drop it. Never blocks."""
        try:
            data = link.sock.recv(65536, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return None, None
        except OSError as error:
            return None, f"a connection that broke before its hello ({error.strerror})"
        if not data:
            return None, "a connection that closed before its hello"
        try:
            messages = link.reader.feed(data)
        except control.MessageError as error:
            return None, f"a connection that sent no hello ({error})"
        if not messages:
            return None, None
        if len(messages) > 1:  # an agent says nothing more until it is welcomed
            return None, "a connection that sent more than its hello"
        return messages[0], None

    def _welcome(self, link: AgentLink, hello: dict, nodes: int, attempt: int,
                 links: dict[int, AgentLink]) -> str | None:
        # authentication first: nothing else of a hello is looked at without the run's token
        if hello.get("type") != "agent_hello" or not protocol.token_matches(hello.get("token"), self.token):
            why = "not this run's token"
            _send_quietly(link, {"type": "refused", "reason": why})
            return f"refused a connection: {why}"
        node = hello.get("node")
        shape = _agent_hello_problem(hello)
        if shape is not None:
            why = shape
        elif hello["attempt"] != attempt:  # a late agent of an earlier step
            why = f"an agent of attempt {hello['attempt']} during attempt {attempt}"
        elif not 0 <= node < nodes:
            why = f"node {node} outside 0..{nodes - 1}"
        elif node in links:
            why = f"node {node} already has an agent"
        else:
            why = None
        if why:
            _send_quietly(link, {"type": "refused", "reason": why})
            return (f"refused an agent from {safe_files.one_line(hello.get('host'), 100)!r} "
                    f"(pid {safe_files.one_line(hello.get('pid'), 20)}): {why}")
        try:
            control.send(link.sock, {"type": "welcome", "run_id": self.run_id})
        except OSError as error:
            return f"agent for node {node} went away at its hello: {error}"
        try:
            clock, wall_offset = measure_clock(link)
        except AgentLost as error:
            return f"agent for node {node} was lost while its clock was measured: {error}"
        link.info = AgentInfo(node=node, host=hello["host"], pid=hello["pid"], address=hello["address"],
                              interface=hello.get("interface"), port=hello.get("port") or 0,
                              swept=tuple(hello.get("swept") or ()), job_id=hello.get("job_id"),
                              strangers=tuple(item for item in hello.get("strangers") or () if isinstance(item, dict)),
                              mono_offset_s=clock.offset_s, wall_offset_s=wall_offset, rtt_s=clock.rtt_s)
        return None

    def close(self) -> None:
        self.guard.close()


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _agent_hello_problem(hello: dict) -> str | None:
    """What is wrong with the shape of an (authenticated) agent's hello; None when every field is as sent by
    chaos.agent.host."""
    expected = {"attempt": _is_int, "node": _is_int, "pid": _is_int, "host": lambda v: isinstance(v, str),
                "address": _is_address, "interface": lambda v: v is None or isinstance(v, str),
                "port": lambda v: v is None or (_is_int(v) and 0 <= v < 65536),
                "job_id": lambda v: v is None or isinstance(v, str),
                "swept": lambda v: v is None or (isinstance(v, list) and all(_is_swept(item) for item in v)),
                "strangers": lambda v: v is None or isinstance(v, list)}
    wrong = [name for name, check in expected.items() if not check(hello.get(name))]
    return f"a malformed hello (field(s) {', '.join(wrong)})" if wrong else None


def _is_address(value: object) -> bool:
    """An IP address (the rendezvous address other nodes are told), nothing else."""
    if not isinstance(value, str):
        return False
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _is_swept(item: object) -> bool:
    return (isinstance(item, dict) and _is_int(item.get("pid")) and isinstance(item.get("command"), str)
            and isinstance(item.get("alive_after_sigkill"), bool))


def _send_quietly(link: AgentLink, message: dict) -> None:
    """A refusal: one short line, never waiting on a peer that does not read."""
    try:
        link.sock.send((json.dumps(message) + "\n").encode(), socket.MSG_DONTWAIT)
    except OSError:
        pass


def teardown_all(links: dict[int, AgentLink], grace_s: float) -> dict[int, dict]:
    """Every agent tears its host down at once (orders first, then the answers); a lost agent's answer is
    {"lost": why}: its host is unreachable, what runs there is unknown (the agent kills it when it sees its
    controller gone)."""
    requests: dict[int, int] = {}
    answers: dict[int, dict] = {}
    for node, link in links.items():
        try:
            requests[node] = link.send({"type": "teardown", "grace_s": grace_s})
        except AgentLost as error:
            answers[node] = {"lost": str(error)}
    for node, request in requests.items():
        try:
            answers[node] = links[node].wait_reply(request, timeout_s=grace_s + REQUEST_TIMEOUT_S)
        except AgentLost as error:
            answers[node] = {"lost": str(error)}
    for link in links.values():
        link.pump()  # exits sent just before the answer
        for process in link.processes.values():
            process.report_exit(process.returncode, process.signal)  # no-op for those already reported
    return answers
