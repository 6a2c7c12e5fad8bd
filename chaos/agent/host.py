"""The agent on one host: it starts that host's ranks on the controller's word, owns them, and is the only
one that signals them.

Owning means what the supervisor does for ranks on its own machine, done where the ranks are: each rank
is the agent's child in a session of its own, dies with the agent (PR_SET_PDEATHSIG) and joins a cgroup of
the agent's where the host allows one, which the agent's own watchdog (chaos.ownership.watchdog) kills if
the agent is killed outright (a torchrun's workers do not die with their torchrun); a pidfd per rank tells the agent of its exit at once (reported to
the controller with its exit code); a signal goes through that pidfd, so it reaches that process and no
other. At teardown the agent runs the supervisor's own teardown (SIGKILL to stopped ranks, SIGTERM, grace,
SIGKILL, cgroup.kill) and then the run-token sweep over its own host, and answers with what it found.

The agent exits after a teardown, and also when its controller goes away or it is told to stop (SIGTERM
from Slurm, a Ctrl-C): then with grace 0, nothing of the run may outlive the controller.

Torch-free: it must start in a fraction of a second on every host, every attempt.
"""

from __future__ import annotations

import ipaddress
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

from chaos import safe_files
from chaos import control
from chaos.agent import protocol
from chaos.ownership import lifeline
from chaos.ownership.processes import ProcessTable, TrackedProcess, create_time, returncode_signal, teardown
from chaos.ownership.sweep import environ_has, same_host, sweep_token_holders

CONNECT_TIMEOUT_S = 60.0
"""How long an agent keeps trying to reach its controller (it may start before the controller listens)."""
TICK_S = 0.2
TASK_VARIABLES = ("SLURM_PROCID", "SLURM_LOCALID", "SLURM_TASK_PID", "SLURM_NTASKS", "SLURM_NPROCS",
                  "SLURM_STEP_NUM_TASKS", "SLURM_TASKS_PER_NODE", "SLURM_STEP_TASKS_PER_NODE", "SLURM_CPU_BIND",
                  "SLURM_CPU_BIND_LIST", "SLURM_CPU_BIND_TYPE", "SLURM_CPU_BIND_VERBOSE")
"""Slurm's variables describing the agent's own task: a rank is not that task, and a trainer that reads
SLURM_PROCID (Lightning, some Megatron set-ups) must see RANK instead."""


_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class AgentError(RuntimeError):
    pass


def _interface_of(address: str) -> str | None:
    for name, addresses in psutil.net_if_addrs().items():
        if any(entry.address == address for entry in addresses):
            return name
    return None


def _free_port(address: str) -> int:
    """A port free on this host now (the kernel's pick): the rendezvous port when this is node 0."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((address, 0))
        return probe.getsockname()[1]


def _holds_connection(pid: object, connection: object) -> str | None:
    """None when process `pid` on this host holds the socket of the TCP connection `connection` describes (its
    rank_end and controller_end, as the controller saw them), else why not.

    Why this proves who said a hello: the two ends of a TCP connection name exactly one socket in the network
    namespace of the host it was made from; /proc/PID/net/tcp (that pid's namespace) gives the socket's
    inode, and a process holds a socket's descriptor (/proc/PID/fd -> socket:[inode]) only when it made the
    socket or was handed it by one that did. A process that names another's pid in its hello is refused here:
    the pid it names does not hold the impostor's connection."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0 or not isinstance(connection, dict):
        return f"expected a pid and a connection, got {pid!r}"
    try:
        rank_end = _endpoint(connection.get("rank_end"))
        controller_end = _endpoint(connection.get("controller_end"))
    except (TypeError, ValueError):
        return "the connection's ends are not (address, port) pairs"
    inode = None
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            try:
                if _proc_endpoint(fields[1]) == rank_end and _proc_endpoint(fields[2]) == controller_end:
                    inode = fields[9]
                    break
            except (IndexError, ValueError):
                continue
        if inode is not None:
            break
    if inode is None or inode == "0":
        return f"no connection from {rank_end} to {controller_end} in the network namespace of pid {pid}"
    try:
        held = any(os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]" for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        held = False
    return None if held else f"pid {pid} does not hold the connection its hello came on"


def _endpoint(value: object) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    address, port = value  # type: ignore[misc]
    if not isinstance(address, str) or not isinstance(port, int):
        raise TypeError("expected [address, port]")
    return _plain(ipaddress.ip_address(address.split("%")[0])), port


def _proc_endpoint(text: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    """'0100007F:1F90' (/proc/net/tcp: the address as the kernel's 32-bit words in this host's byte order)."""
    address, port = text.split(":")
    raw = bytes.fromhex(address)
    if sys.byteorder == "little":
        raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return _plain(ipaddress.ip_address(raw)), int(port, 16)


def _plain(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An IPv4 address seen through an IPv6 socket (::ffff:a.b.c.d) is that IPv4 address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class HostAgent:
    def __init__(self, controller: tuple[str, int], token: str, node: int, attempt: int) -> None:
        self.controller = controller
        self.attempt = attempt
        self.token = token
        self.node = node
        self.sock: socket.socket | None = None
        self.reader: control.LineReader | None = None
        self.table = ProcessTable()
        self.cgroup: lifeline.AttemptCgroup | None = None
        self.selector = selectors.DefaultSelector()
        self.stop_requested: str | None = None
        self.reported: set[int] = set()
        self.watchdog: lifeline.Watchdog | None = None
        self.run_id = "unnamed"
        """The run's public name, from the controller's welcome: in this host's cgroup name."""

    # ---- connection ---------------------------------------------------------------------------------
    def connect(self, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        # before anything of this attempt starts here: what still carries the run's token on this host is
        # an earlier attempt's, left when that attempt's agent was lost (its host cut off, the agent killed).
        # Swept before connecting: the controller gives a connection only seconds to say its hello.
        swept = sweep_token_holders(f"{control.ENV_RUN_TOKEN}={self.token}", exclude=set(), same_host_only=True)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.sock = socket.create_connection(self.controller, timeout=5.0)
                break
            except OSError as error:
                if time.monotonic() > deadline:
                    raise AgentError(f"cannot reach the controller at {self.controller[0]}:{self.controller[1]}: "
                                     f"{error}") from error
                time.sleep(0.2)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(None)
        self.reader = control.LineReader(self.sock)
        address = self.sock.getsockname()[0]  # the address this host reaches the controller from
        self._send({"type": "agent_hello", "token": self.token, "node": self.node, "attempt": self.attempt,
                    "host": socket.gethostname(),
                    "pid": os.getpid(), "address": address, "interface": _interface_of(address),
                    "port": _free_port(address), "job_id": os.environ.get("SLURM_JOB_ID"),
                    "swept": [{"pid": item.pid, "command": item.command, "alive_after_sigkill": item.alive_after_sigkill}
                              for item in swept],
                    "strangers": [item.to_fields() for item in swept.strangers]})
        try:
            answer = self.reader.read_message()
        except control.MessageError as error:
            raise AgentError(f"the controller answered with something that is not a message: {error}") from None
        if answer is None or answer.get("type") != "welcome":
            reason = answer.get("reason") if answer else "it closed the connection"
            raise AgentError(f"the controller refused this agent: {reason}")
        run_id = answer.get("run_id")
        # the public name for this host's cgroup (never the token: cgroup names are readable by every user)
        self.run_id = run_id if isinstance(run_id, str) and _RUN_ID.fullmatch(run_id) else "unnamed"

    def _send(self, message: dict) -> None:
        assert self.sock is not None
        try:
            control.send(self.sock, message)
        except OSError:
            self.stop_requested = self.stop_requested or "the controller's connection broke"

    # ---- the loop -----------------------------------------------------------------------------------
    def serve(self) -> int:
        """Until a teardown (exit 0) or the controller's loss or a stop signal (exit 1, everything killed)."""
        assert self.sock is not None
        self.watchdog = lifeline.Watchdog()
        self.cgroup, _ = lifeline.create_cgroup(f"chaos-{self.run_id}-a{self.attempt:02d}-node{self.node}")
        if self.cgroup is not None:
            self.watchdog.guard_cgroup(self.cgroup)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        self.selector.register(self.sock, selectors.EVENT_READ, ("controller", None))
        buffered = self.reader.feed(b"") if self.reader else []
        for message in buffered:
            if self._handle(message):
                return 0
        while self.stop_requested is None:
            for key, _ in self.selector.select(TICK_S):
                kind, subject = key.data
                if kind == "exit":
                    self._on_exit(subject)
                    continue
                try:
                    data = self.sock.recv(65536)
                except (InterruptedError, BlockingIOError):
                    continue
                except OSError:
                    data = b""
                if not data:
                    self.stop_requested = "the controller went away"
                    break
                try:
                    messages = self.reader.feed(data)
                except control.MessageError as error:
                    self.stop_requested = f"the controller sent something that is not a message ({error})"
                    break
                for message in messages:
                    if self._handle(message):
                        return 0
        print(f"chaos agent (node {self.node}): {self.stop_requested}; killing what this agent started",
              file=sys.stderr, flush=True)
        self._teardown(0.0)
        return 1

    def _on_signal(self, signum, frame) -> None:
        self.stop_requested = f"stopped by {signal.Signals(signum).name}"

    def _handle(self, message: dict) -> bool:
        """Acts on one order; True once torn down (the agent's work is over)."""
        kind, request = message.get("type"), message.get("id")
        if kind == "clock":
            self._send({"type": "reply", "id": request, "mono": time.monotonic(), "wall": time.time()})
        elif kind == "launch":
            self._send({"type": "reply", "id": request, **self._launch(message)})
        elif kind == "signal":
            self._send({"type": "reply", "id": request, "delivered": self._signal(message)})
        elif kind == "adopt":
            self._send({"type": "reply", "id": request, **self._adopt(message)})
        elif kind == "vouch":
            why_not = _holds_connection(message.get("pid"), message.get("connection"))
            self._send({"type": "reply", "id": request, "holds": why_not is None, "reason": why_not})
        elif kind == "teardown":
            self._send({"type": "reply", "id": request, **self._teardown(float(message.get("grace_s", 0.0)))})
            return True
        else:
            self._send({"type": "reply", "id": request, "error": f"unknown order {kind!r}"})
        return False

    # ---- orders -------------------------------------------------------------------------------------
    def _launch(self, message: dict) -> dict:
        procs = self.cgroup.procs_file if self.cgroup is not None else None
        launched = []
        try:
            for entry in message["ranks"]:
                env = {name: value for name, value in os.environ.items()
                       if name not in TASK_VARIABLES and name != protocol.ENV_AGENT_TOKEN}
                env.update(entry["env"])
                output = safe_files.open_append(entry["output"])
                try:
                    popen = subprocess.Popen(entry["argv"], env=env, cwd=entry.get("cwd") or None,
                                             stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                                             start_new_session=True, close_fds=True,
                                             preexec_fn=lifeline.child_setup(os.getpid(), procs))
                finally:
                    output.close()
                role = entry.get("role", "rank")
                rank = int(entry["rank"]) if role == "rank" else None
                process = TrackedProcess.from_popen(popen, role=role, rank=rank, node=self.node)
                self.watchdog.guard_group(process.pid, process.create_time)
                self.table.launched.append(process)
                if rank is not None:
                    self.table.ranks[rank] = process
                self.selector.register(process.pidfd, selectors.EVENT_READ, ("exit", process))
                launched.append({"role": role, "rank": rank, "pid": process.pid})
        except (OSError, KeyError, ValueError, TypeError) as error:
            return {"launched": launched, "cgroup": procs, "error": f"cannot start a rank: {error}"}
        return {"launched": launched, "cgroup": procs, "error": None}

    def _adopt(self, message: dict) -> dict:
        """A process that said hello as rank `rank`, owned from now on like a rank this agent started (pidfd,
        exit report, teardown, its cgroup) if it is this attempt's: a worker of a torchrun this agent
        started, or a Slurm task of the attempt's ranks step on this host (slurmstepd's child, not ours:
        only what chaos started through srun carries the run's token and this attempt in its environment)."""
        pid, rank = message.get("pid"), message.get("rank")
        if not isinstance(pid, int) or not isinstance(rank, int):
            return {"adopted": False, "reason": f"expected a pid and a rank, got {pid!r}, {rank!r}"}
        ancestor = self.table.launched_ancestor(pid)
        task = environ_has(pid, f"{control.ENV_RUN_TOKEN}={self.token}", f"{control.ENV_ATTEMPT}={self.attempt}") \
            and same_host(pid)
        if (ancestor is None or ancestor.role != "agent") and not task:
            return {"adopted": False, "reason": f"pid {pid} is neither a worker of a torchrun this agent started "
                                                f"nor a task of attempt {self.attempt} on this host"}
        why_not = _holds_connection(pid, message.get("connection"))
        if why_not is not None:  # the hello's pid is a claim: only the process holding its connection is adopted
            return {"adopted": False, "reason": why_not}
        started = create_time(pid)
        process = TrackedProcess.adopt(pid, started, role="rank", rank=rank, node=self.node) if started else None
        if process is None:
            return {"adopted": False, "reason": f"pid {pid} is gone"}
        if task and message.get("exit_file"):
            self.table.adopt_slurm_task(process, Path(message["exit_file"]))
        if task and self.cgroup is not None:
            for member in [pid] + ([process.status_writer[0]] if process.status_writer else []):
                try:  # into this agent's cgroup: its teardown's cgroup.kill and its watchdog reach them
                    Path(self.cgroup.procs_file).write_text(str(member))
                except OSError:
                    pass  # the pidfd, the process group and the token sweep still hold
        self.table.ranks[rank] = process
        self.selector.register(process.pidfd, selectors.EVENT_READ, ("exit", process))
        return {"adopted": True, "reason": None}

    def _signal(self, message: dict) -> bool:
        """Only a process this agent started or adopted, by pidfd: False for any other pid, or one gone."""
        process = next((p for p in self.table.all_tracked() if p.pid == message.get("pid")), None)
        name = message.get("signal")
        if process is None or process.exited or name not in signal.Signals.__members__:
            return False
        return process.send(name)

    def _on_exit(self, process: TrackedProcess) -> None:
        self.selector.unregister(process.pidfd)
        process.mark_exited(time.monotonic())
        self._report_exit(process)

    def _report_exit(self, process: TrackedProcess) -> None:
        if process.pid in self.reported:
            return
        self.reported.add(process.pid)
        if process.popen is not None and process.popen.returncode is not None:  # reaped by teardown
            returncode, signal_name = process.popen.returncode, returncode_signal(process.popen.returncode)
        else:
            returncode, signal_name = process.exit_status()
        self._send({"type": "exit", "rank": process.rank, "pid": process.pid, "returncode": returncode,
                    "signal": signal_name})

    def _teardown(self, grace_s: float) -> dict:
        for process in self.table.all_tracked():
            if process.pidfd is not None and not process.exited:
                self.selector.unregister(process.pidfd)
        # exit statuses are read before teardown reaps (a reaped child's status is gone with its zombie)
        for process in self.table.all_tracked():
            if not process.alive():
                process.mark_exited(time.monotonic())
                self._report_exit(process)
        result = teardown(self.table, grace_s)
        for process in self.table.all_tracked():
            self._report_exit(process)
        escaped: list[int] = []
        if self.cgroup is not None:
            escaped = sorted(set(self.cgroup.kill()) - set(result.sigkill) - set(result.sigterm))
            self.cgroup.remove()
        leaked = sweep_token_holders(f"{control.ENV_RUN_TOKEN}={self.token}", exclude=set(), same_host_only=True,
                                     table=self.table)
        survivors = sorted(set(result.survivors) | {item.pid for item in leaked if item.alive_after_sigkill})
        if self.watchdog is not None:
            self.watchdog.release_all()
        return {"sigterm": result.sigterm, "sigkill": result.sigkill, "survivors": survivors,
                "cgroup_killed": escaped, "duration_s": round(result.duration_s, 4),
                "leaked": [{"pid": item.pid, "command": item.command, "tied_by": item.tied_by} for item in leaked],
                "strangers": [item.to_fields() for item in leaked.strangers]}

    def close(self) -> None:
        if self.watchdog is not None:
            self.watchdog.close()
        for process in self.table.all_tracked():
            process.close()
        self.selector.close()
        if self.sock is not None:
            self.sock.close()
