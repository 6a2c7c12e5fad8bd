"""Issue 20: the supervisor's two listening channels against peers that do not play by the protocol, and where
the run's secret may appear.

The rank channel is driven through the real Attempt message handling (ControlServer on a real Unix socket,
the attempt's own selector), the agent channel through the real AgentServer.gather with a real agent; one
short live run checks argv, cgroup names and file modes. Every hostile peer here must cost the run only its
own connection."""

from __future__ import annotations

import json
import os
import selectors
import socket
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from chaos import control, history
from chaos.history import read_jsonl, supervisor_history_path
from chaos.supervisor import launcher
from chaos.supervisor import supervisor as supervisor_module
from chaos.supervisor.hosts.agents import AgentServer, teardown_all
from chaos.ownership import lifeline
from chaos.supervisor.attempt import Attempt
from chaos.supervisor.control_server import ControlServer
from chaos.ownership.processes import TrackedProcess

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_multihost_agents import start_agent  # noqa: E402
from test_supervisor import fault, make_config  # noqa: E402

TESTS = Path(__file__).resolve().parent

RANK = textwrap.dedent("""
    import json, os, socket, sys
    sys.stdin.readline()  # connects when told
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(sys.argv[1])
    pid = int(sys.argv[2]) if len(sys.argv) > 2 else os.getpid()
    sock.sendall((json.dumps({"type": "hello", "rank": 0, "pid": pid, "attempt": 1,
                              "token": os.environ["CHAOS_RUN_TOKEN"], "host": socket.gethostname()}) + "\\n").encode())
    print("answer:" + sock.makefile().readline().strip(), flush=True)  # the plan, or nothing when refused
    sys.stdin.readline()
""")
"""A rank's hello as the probe says it (rank 0; argv[2]: a pid to claim instead of its own)."""


# ---- the rank channel, through the attempt's own message handling ----------------------------------------
class RankChannel:
    """An attempt of a one-rank run, its control socket listening, served by the test (no launch)."""

    def __init__(self, tmp_path: Path) -> None:
        run_dir = tmp_path / "run"
        config = make_config(run_dir, [fault(ranks=(0,), step=3, phase="backward")], world_size=1)
        self.sup = supervisor_module._Supervisor(config, None)
        self.sup.run_dir.mkdir(parents=True, exist_ok=True)
        self.sup.writer = history.HistoryWriter(supervisor_history_path(self.sup.run_dir))
        self.server = self.sup.server = ControlServer(self.sup.run_dir)
        self.path = self.server.start()
        self.sup.watchdog = lifeline.Watchdog()
        self.attempt = Attempt(self.sup.attempt_context(self.path), 1)
        self.attempt.directory.mkdir(parents=True, exist_ok=True)
        self.attempt.launch_mono = self.attempt.last_progress = time.monotonic()
        self.server.selector = self.attempt.selector
        self.attempt.selector.register(self.server.listener, selectors.EVENT_READ, ("accept", None))
        self.processes: list[subprocess.Popen] = []

    def rank(self, claimed_pid: int | None = None) -> subprocess.Popen:
        """A process that says hello as rank 0 when told (`.go()`), with the run's token."""
        argv = [sys.executable, "-c", RANK, self.path] + ([str(claimed_pid)] if claimed_pid else [])
        process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                   env={**os.environ, control.ENV_RUN_TOKEN: self.sup.run_token})
        self.processes.append(process)
        return process

    def launched(self, process: subprocess.Popen) -> None:
        """`process` is the rank 0 this attempt launched."""
        self.attempt.table.launched = [TrackedProcess.from_popen(process, role="rank", rank=0, node=0)]

    def serve(self, seconds: float, until=lambda: False) -> float:
        """The attempt's loop (its events and periodic work) for `seconds` or until `until()`; the time taken."""
        started = time.monotonic()
        while time.monotonic() - started < seconds and not until():
            for key, _ in self.attempt.selector.select(0.05):
                kind, subject = key.data
                if kind == "accept":
                    self.attempt.handshake.accept()
                elif kind == "message":
                    self.attempt.handshake.on_readable(subject)
            self.attempt._periodic()
        return time.monotonic() - started

    def records(self, event: str) -> list[dict]:
        return [r for r in read_jsonl(supervisor_history_path(self.sup.run_dir)) if r["event"] == event]

    def close(self) -> None:
        for process in self.processes:
            process.kill()
            process.wait()
        self.server.close()
        self.sup.watchdog.close()
        self.sup.writer.close()


@pytest.fixture
def channel(tmp_path):
    channel = RankChannel(tmp_path)
    yield channel
    channel.close()


def connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    return sock


def send_in_background(sock: socket.socket, payload: bytes) -> threading.Thread:
    """Sends while the test serves the other end (a payload larger than the socket's buffer would block)."""
    def send() -> None:
        try:
            sock.sendall(payload)
        except OSError:
            pass

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    return sender


def closed_by_peer(sock: socket.socket) -> bool:
    """The other end closed (what it said before, a refusal, is read and passed over)."""
    while True:
        try:
            if sock.recv(65536, socket.MSG_DONTWAIT) == b"":
                return True
        except BlockingIOError:
            return False
        except OSError:
            return True


def assert_real_rank_accepted(channel: RankChannel) -> None:
    real = channel.rank()
    channel.launched(real)
    real.stdin.write("go\n")
    real.stdin.flush()
    channel.serve(20, until=lambda: 0 in channel.attempt.ranks)
    assert 0 in channel.attempt.ranks and channel.attempt.end is None
    plan = json.loads(real.stdout.readline().removeprefix("answer:"))
    assert plan["type"] == "plan" and [hold["fault_id"] for hold in plan["holds"]] == ["f1"]


HOSTILE_BEFORE_HELLO = {
    "non_object_json": b'["hello", 0]\n',
    "a_string": b'"hello"\n',
    "held_with_unhashable_fault_id": b'{"type": "held", "fault_id": ["f1"]}\n',
    "held_before_hello": b'{"type": "held", "fault_id": "f1", "step": 3, "phase": "backward", "index": null}\n',
    "deep_nesting": b"[" * 200_000 + b"]" * 200_000 + b"\n",
    "deep_nesting_in_an_object": b'{"type": "hello", "rank": ' + b"[" * 200_000 + b"]" * 200_000 + b"}\n",
    "bad_utf8": b'{"type": "hello", "host": "\xff\xfe"}\n',
    "hello_without_token": b'{"type": "hello", "rank": 0, "pid": 1, "attempt": 1}\n',
}


@pytest.mark.parametrize("payload", HOSTILE_BEFORE_HELLO.values(), ids=HOSTILE_BEFORE_HELLO.keys())
def test_rank_channel_hostile_message_before_a_hello_drops_only_that_connection(channel, payload):
    hostile = connect(channel.path)
    send_in_background(hostile, payload).join(0.2)
    channel.serve(10, until=lambda: closed_by_peer(hostile))
    assert closed_by_peer(hostile) and channel.attempt.end is None
    assert channel.attempt.ranks == {}
    assert_real_rank_accepted(channel)


def test_rank_channel_a_hello_with_the_token_but_unhashable_fields_is_rejected_not_a_crash(channel):
    hostile = connect(channel.path)
    hostile.sendall((json.dumps({"type": "hello", "token": channel.sup.run_token, "rank": [0], "pid": {"a": 1},
                                 "attempt": [1]}) + "\n").encode())
    channel.serve(10, until=lambda: closed_by_peer(hostile))
    assert closed_by_peer(hostile) and channel.attempt.end is None
    assert_real_rank_accepted(channel)


def flood(hostile: socket.socket) -> tuple[threading.Thread, list[int]]:
    """64 MiB of one line without a newline, sent from a thread; returns it and the bytes the peer took."""
    sent = [0]

    def send() -> None:
        chunk = b"x" * (1 << 20)
        try:
            for _ in range(64):
                hostile.sendall(chunk)
                sent[0] += len(chunk)
        except OSError:
            pass

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    return sender, sent


def test_rank_channel_a_64_mib_line_is_cut_off_in_bounded_time_and_memory(channel):
    hostile = connect(channel.path)
    hostile.settimeout(15)
    sender, sent = flood(hostile)
    took = channel.serve(12, until=lambda: not sender.is_alive())
    sender.join(timeout=5)
    assert sent[0] <= 8 << 20, f"the supervisor read {sent[0] >> 20} MiB of one line"
    assert took < 5 and channel.attempt.end is None
    assert_real_rank_accepted(channel)


def test_rank_channel_slowloris_without_a_hello_is_dropped_at_its_deadline(channel):
    hostile = connect(channel.path)
    hostile.sendall(b'{"type": ')
    started = time.monotonic()
    while time.monotonic() - started < 9 and not closed_by_peer(hostile):
        try:
            hostile.sendall(b" ")  # one byte a second: never a whole hello
        except OSError:
            break
        channel.serve(1.0)
    assert closed_by_peer(hostile), "a connection without a hello was held for 9 s"
    assert channel.attempt.end is None
    assert_real_rank_accepted(channel)


def test_rank_channel_impostor_claiming_the_real_ranks_pid_is_rejected_and_the_real_rank_accepted(channel):
    """An impostor with the run's token says hello first, as rank 0, naming the real rank 0's pid: it gets no
    plan (the kernel says who connected), and the real rank is not turned away as a second hello."""
    real = channel.rank()
    channel.launched(real)
    impostor = channel.rank(claimed_pid=real.pid)
    impostor.stdin.write("go\n")
    impostor.stdin.flush()
    channel.serve(10, until=lambda: bool(channel.records("rank_rejected")))
    assert impostor.stdout.readline().strip() == "answer:", "the impostor was given rank 0's plan"
    [rejected] = channel.records("rank_rejected")
    assert rejected["pid"] == real.pid and "SO_PEERCRED" in rejected["reason"]
    assert 0 not in channel.attempt.ranks
    real.stdin.write("go\n")
    real.stdin.flush()
    channel.serve(10, until=lambda: 0 in channel.attempt.ranks)
    assert 0 in channel.attempt.ranks and channel.attempt.ranks[0].process.pid == real.pid
    assert json.loads(real.stdout.readline().removeprefix("answer:"))["holds"][0]["fault_id"] == "f1"
    assert len(channel.records("rank_rejected")) == 1


# ---- the agent channel -------------------------------------------------------------------------------------
TOKEN = "agent-channel-token-0123456789abcdef"
HOSTILE_AGENT_HELLOS = {
    "non_object_json": b'[1, 2, 3]\n',
    "deep_nesting": b"[" * 200_000 + b"]" * 200_000 + b"\n",
    "bad_utf8": b'{"type": "agent_hello", "token": "\xff"}\n',
    "token_a_lone_surrogate": b'{"type": "agent_hello", "token": "\\ud800", "node": 0, "attempt": 1}\n',
    "token_a_list": b'{"type": "agent_hello", "token": ["x"], "node": 0, "attempt": 1}\n',
    "authenticated_with_unhashable_node": json.dumps({"type": "agent_hello", "token": TOKEN, "node": [0],
                                                      "attempt": 1}).encode() + b"\n",
    "authenticated_with_a_pid_that_is_not_a_number": json.dumps(
        {"type": "agent_hello", "token": TOKEN, "node": 0, "attempt": 1, "host": "h", "pid": "x",
         "address": "127.0.0.1", "port": 1}).encode() + b"\n",
}


@pytest.mark.parametrize("payload", HOSTILE_AGENT_HELLOS.values(), ids=HOSTILE_AGENT_HELLOS.keys())
def test_agent_channel_hostile_hello_drops_only_that_connection(payload):
    server = AgentServer(TOKEN, "127.0.0.1")
    host, port = server.address.rsplit(":", 1)
    hostile = socket.create_connection((host, int(port)))
    send_in_background(hostile, payload)
    agent = None
    try:
        first, refused = server.gather(1, 1, 1.0, lambda: None)  # the hostile one alone first
        assert first == {} and len(refused) == 1
        assert closed_by_peer(hostile)
        agent = start_agent(server, token=TOKEN)
        links, refused = server.gather(1, 1, 30.0, lambda: None if agent.poll() is None else "agent exited")
        assert set(links) == {0} and refused == []
        teardown_all(links, grace_s=1.0)
        assert agent.wait(timeout=10) == 0
    finally:
        hostile.close()
        if agent is not None:
            agent.kill()
            agent.wait()
        server.close()


def test_agent_channel_a_64_mib_hello_is_cut_off_in_bounded_time():
    server = AgentServer(TOKEN, "127.0.0.1")
    host, port = server.address.rsplit(":", 1)
    hostile = socket.create_connection((host, int(port)))
    hostile.settimeout(15)
    sender, sent = flood(hostile)
    try:
        started = time.monotonic()
        links, refused = server.gather(1, 1, 3.0, lambda: None)
        took = time.monotonic() - started
        sender.join(timeout=10)
        assert links == {} and took < 5
        assert sent[0] <= 16 << 20, f"the listener read {sent[0] >> 20} MiB of one line"
    finally:
        hostile.close()
        server.close()


def test_agent_channel_slowloris_does_not_delay_gather():
    """One byte every second never completes a hello: gather still returns at its own timeout."""
    server = AgentServer(TOKEN, "127.0.0.1")
    host, port = server.address.rsplit(":", 1)
    hostile = socket.create_connection((host, int(port)))
    stop = threading.Event()

    def drip() -> None:
        try:
            hostile.sendall(b'{"type": ')
            for _ in range(15):  # at most 15 s: a gather that waits for it still ends, late
                if stop.wait(1.0):
                    break
                hostile.sendall(b" ")
        except OSError:
            pass

    dripper = threading.Thread(target=drip, daemon=True)
    dripper.start()
    try:
        started = time.monotonic()
        links, refused = server.gather(1, 1, 3.0, lambda: None)
        took = time.monotonic() - started
        assert links == {} and took < 4.5, f"gather(timeout 3 s) took {took:.1f} s"
    finally:
        stop.set()
        hostile.close()
        dripper.join(timeout=5)
        server.close()


# ---- descriptors ---------------------------------------------------------------------------------------
LOW_LIMIT_CHILD = textwrap.dedent("""
    import resource, sys, time
    sys.path.insert(0, sys.argv[2])
    channel_kind, tmp = sys.argv[1], sys.argv[3]
    if channel_kind == "rank":
        from pathlib import Path
        from test_security_channels import RankChannel
        channel = RankChannel(Path(tmp))
        print(channel.path, flush=True)
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        channel.serve(8)
        print("served", channel.attempt.end, len(channel.server.connections), flush=True)
    else:
        from chaos.supervisor.hosts.agents import AgentServer
        server = AgentServer("a-token", "127.0.0.1")
        print(server.address, flush=True)
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        links, refused = server.gather(1, 1, 8.0, lambda: None)
        print("served", len(links), len(refused), flush=True)
""")


@pytest.mark.parametrize("channel_kind", ["rank", "agent"])
def test_many_idle_connections_at_a_low_descriptor_limit_never_crash_the_loop(tmp_path, channel_kind):
    child = subprocess.Popen([sys.executable, "-c", LOW_LIMIT_CHILD, channel_kind, str(TESTS), str(tmp_path)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    idle = []
    try:
        address = child.stdout.readline().strip()
        assert address, child.stderr.read()
        for _ in range(100):
            if channel_kind == "rank":
                idle.append(connect(address))
            else:
                host, port = address.rsplit(":", 1)
                idle.append(socket.create_connection((host, int(port))))
        out, err = child.communicate(timeout=60)
        assert child.returncode == 0 and out.startswith("served"), err[-2000:]
    finally:
        for sock in idle:
            sock.close()
        child.kill()
        child.wait()


# ---- the run's secret ----------------------------------------------------------------------------------
def test_run_token_has_128_bits_from_secrets_and_names_use_a_separate_public_id(tmp_path, monkeypatch):
    import secrets

    tokens = {supervisor_module._Supervisor(make_config(tmp_path / f"r{i}"), None).run_token for i in range(3)}
    assert len(tokens) == 3 and all(len(token) >= 32 and int(token, 16) >= 0 for token in tokens)
    monkeypatch.setattr(secrets, "token_hex", lambda nbytes=32: "ab" * nbytes)
    sup = supervisor_module._Supervisor(make_config(tmp_path / "r"), None)
    assert sup.run_token == "ab" * 16  # drawn from secrets, 16 bytes
    assert sup.run_id and sup.run_token not in sup.run_id


def test_srun_job_names_carry_the_public_run_id_not_the_token(tmp_path, monkeypatch):
    argvs = []
    monkeypatch.setattr(launcher, "_spawn_srun", lambda argv, env, *rest: argvs.append((argv, env)))
    config = make_config(tmp_path / "run")
    plan = launcher.AttemptLaunch(1, tmp_path, 1234, "tcp://127.0.0.1:1", run_dir=str(tmp_path),
                                  run_token="s3cr3t" * 6, run_id="4242-cafe0123")
    launcher.launch_agents(config.launch, plan, "127.0.0.1:1")
    [(argv, env)] = argvs
    assert "--job-name=chaos-a1-4242-cafe0123" in argv
    assert not any("s3cr3t" in part for part in argv)
    assert env["CHAOS_AGENT_TOKEN"] == "s3cr3t" * 6  # the secret travels in the environment only


@pytest.fixture(scope="module")
def live_run(tmp_path_factory):
    """One short real run: while its ranks train, where the token is, what listens, the files' modes."""
    run = tmp_path_factory.mktemp("live") / "run"
    seen: dict = {}

    def look(progress: dict) -> None:
        if seen or progress.get("step") is None:
            return
        token = (run / control.RUN_TOKEN_FILE).read_text()
        seen["token"] = token
        seen["token_mode"] = stat.S_IMODE((run / control.RUN_TOKEN_FILE).stat().st_mode)
        seen["socket_mode"] = stat.S_IMODE((run / "control.sock").stat().st_mode)
        seen["argv"] = []
        seen["pids"] = 0
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                argv = Path(f"/proc/{name}/cmdline").read_bytes()
                environ = Path(f"/proc/{name}/environ").read_bytes()
            except OSError:
                continue
            if token.encode() in environ:
                seen["pids"] += 1
            if token.encode() in argv:
                seen["argv"].append(argv.replace(b"\0", b" ").decode(errors="replace"))
        seen["cgroups"], seen["chaos_cgroups"] = [], []
        for root, dirs, _ in os.walk("/sys/fs/cgroup"):
            seen["cgroups"] += [os.path.join(root, d) for d in dirs if token in d]
            seen["chaos_cgroups"] += [d for d in dirs if d.startswith("chaos-")]
            if root.count("/") > 5:
                dirs[:] = []
        import psutil

        seen["listening"] = [c.laddr for c in psutil.Process().net_connections(kind="inet")
                             if c.status == psutil.CONN_LISTEN]

    from chaos.supervisor import supervise
    outcome = supervise(make_config(run, train_iters=4, save_interval=2), on_progress=look)
    return outcome, seen


def test_live_run_the_token_is_in_no_processs_argv_and_no_cgroup_name(live_run):
    outcome, seen = live_run
    assert outcome.outcome == "complete" and seen, "the run ended before its ranks trained"
    assert seen["pids"] >= 2  # the ranks carry it, in their environment
    assert seen["argv"] == []
    if not seen["chaos_cgroups"]:
        pytest.skip("no cgroup was made here (not root, or no writable cgroup v2): argv checked, names not")
    assert seen["cgroups"] == []


def test_live_run_the_token_file_and_the_control_socket_are_the_users_alone(live_run):
    _, seen = live_run
    assert seen["token_mode"] == 0o600
    assert seen["socket_mode"] == 0o600


def test_live_run_local_mode_listens_on_no_network_address(live_run):
    """hosts: local needs no network: the ranks reach the supervisor over its Unix socket; nothing listens on
    TCP, and a TCP listener chaos makes without an address is on loopback."""
    _, seen = live_run
    assert [address for address in seen["listening"] if not address.ip.startswith("127.")] == []
    server = ControlServer(Path("/tmp"))
    try:
        assert server.start_tcp().startswith("tcp://127.0.0.1:")
    finally:
        server.listener.close()
    agents = AgentServer(TOKEN)
    try:
        assert agents.address.startswith("127.0.0.1:")
    finally:
        agents.close()


# ---- TCP: the agent vouches for the pid that holds the connection ------------------------------------------
def test_tcp_impostor_claiming_a_tasks_pid_is_not_adopted_and_the_task_is(tmp_path):
    """On a cluster a hello comes over TCP: the rank's agent adopts the pid it names only if that process holds
    the very connection the hello came on. An impostor on the same host, with the run's token and this
    attempt in its environment, naming the real task's pid, is refused; the real task is adopted."""
    server = AgentServer(TOKEN, "127.0.0.1")
    agent = start_agent(server, token=TOKEN)
    control_socket = socket.create_server(("127.0.0.1", 0))
    connect_and_wait = [sys.executable, "-c", "import socket, sys, time; "
                        "s = socket.create_connection(('127.0.0.1', int(sys.argv[1]))); time.sleep(120)",
                        str(control_socket.getsockname()[1])]
    env = {**os.environ, "CHAOS_RUN_TOKEN": TOKEN, "CHAOS_ATTEMPT": "1"}
    task = impostor = None
    try:
        links, _ = server.gather(1, 1, 30.0, lambda: None)
        link = links[0]
        task = subprocess.Popen(connect_and_wait, env=env)
        task_connection, _ = control_socket.accept()
        impostor = subprocess.Popen(connect_and_wait, env=env)
        impostor_connection, _ = control_socket.accept()

        def ends(connection: socket.socket) -> dict:
            return {"rank_end": list(connection.getpeername()), "controller_end": list(connection.getsockname())}

        claimed = link.request({"type": "adopt", "pid": task.pid, "rank": 0, "connection": ends(impostor_connection)})
        assert claimed["adopted"] is False and "does not hold the connection" in claimed["reason"]
        adopted = link.request({"type": "adopt", "pid": task.pid, "rank": 0, "connection": ends(task_connection)})
        assert adopted["adopted"] is True
        vouched = link.request({"type": "vouch", "pid": impostor.pid, "connection": ends(task_connection)})
        assert vouched["holds"] is False
        teardown_all(links, grace_s=1.0)
        assert agent.wait(timeout=10) == 0
    finally:
        for process in (task, impostor, agent):
            if process is not None:
                process.kill()
                process.wait()
        server.close()
        control_socket.close()
