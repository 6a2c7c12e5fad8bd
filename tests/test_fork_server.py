"""The fork server (restart.warm: fork, what `auto` resolves to under the direct launcher): what a ready zygote
holds, that its hygiene check refuses a fork after an import that left something a cold rank would not have,
that a forked child starts and ends as an interpreter would, that nothing of it outlives a killed supervisor,
(fork against warm spares against cold, one scenario, one golden, and an unmodified trainer forked:
tests/test_warm_spares.py)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from chaos.supervisor.spares.fork_server import ForkServer
from chaos.supervisor.spares.zygote import ENV_CHANNEL_FD, ENV_RUN_DIR
from test_multihost_agents import wait_for
from test_warm_spares import gpt3_spec

REPO = Path(__file__).resolve().parents[1]


def running(pid: int) -> bool:
    """The process exists and is not a zombie (dead, waiting for a parent to reap it)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# ---- 1. a real zygote of the gpt3 workload ---------------------------------------------------------------
def test_a_ready_zygote_has_imported_and_holds_nothing_of_the_run(tmp_path):
    """After its imports (torch, megatron-core): one thread, no CUDA driver, no socket, no file of the run
    but its own log; it leads its own session and is our child; closed, it is gone."""
    run_dir = tmp_path / "run"
    spec = gpt3_spec(run_dir)
    env = {**os.environ, **spec.env, "PYTHONUNBUFFERED": "1"}
    server = ForkServer(spec, run_dir / "spares", env, run_dir, ready_timeout_s=120)
    pid = server.start()
    try:
        line = server._read_line(time.monotonic() + 120)
        assert line is not None, f"the zygote never said it was ready: {server.refusal}"
        ready = json.loads(line)
        assert ready["ready"] is True and ready["pid"] == pid, ready
        assert ready["problems"] == [], ready["problems"]
        assert os.listdir(f"/proc/{pid}/task") == [str(pid)], "the zygote runs more than one thread"
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert "libtorch" in maps, "the zygote did not import torch"
        assert "libcuda.so" not in maps, "the zygote holds a CUDA driver mapping"
        process = psutil.Process(pid)
        assert process.net_connections(kind="inet") == [], "the zygote has a TCP socket (a process group?)"
        files = [f.path for f in process.open_files() if str(run_dir) in f.path]
        assert all(Path(f).parent == run_dir / "spares" for f in files), files
        assert os.getpgid(pid) == pid and os.getsid(pid) == pid, "the zygote does not lead its own session"
        assert process.ppid() == os.getpid(), "the zygote is not our child"
    finally:
        server.close()
    assert not running(pid), "the zygote outlived close()"
    assert not server.alive()


# ---- 2. the zygote run directly: hygiene refusals, and children that end as interpreters ----------------
BAD_IMPORTS = {
    "threads": "import threading, time\n"
               "threading.Thread(target=time.sleep, args=(600,), daemon=True).start()\n",
    "socket": "import socket\n"
              "HELD = socket.socket(socket.AF_INET, socket.SOCK_STREAM)\n",
    "generator": "import torch\n"
                 "torch.rand(1)\n",
}

CLEAN_IMPORT = "VALUE = 1  # imports nothing\n"

CHILD_SCRIPTS = {
    "exit3": """
import os, sys
print("hello from the forked child", flush=False)
with open(os.environ["CHILD_MARK"], "w") as handle:
    handle.write(f"{os.getcwd()}|{sys.argv[1:]}|{__name__}")
sys.exit(3)
""",
    "raises": """
raise RuntimeError("boom from the forked child")
""",
    "atexit": """
import atexit, os
def at_exit():
    with open(os.environ["CHILD_MARK"], "w") as handle:
        handle.write("atexit ran")
atexit.register(at_exit)
print("registered")
""",
    "sleeps": """
import time
print("sleeping", flush=True)
time.sleep(600)
""",
}


class DirectZygote:
    """`python -m chaos.supervisor.spares.zygote MODULE`, on one end of a socketpair, as the fork server starts
    it but without it: the protocol spoken by hand."""

    def __init__(self, tmp_path: Path, module: str) -> None:
        self.run_dir = tmp_path / "run"
        self.run_dir.mkdir(exist_ok=True)
        self.channel, theirs = socket.socketpair()
        self.log_path = tmp_path / f"zygote-{module}.log"
        python_path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, ENV_CHANNEL_FD: str(theirs.fileno()), ENV_RUN_DIR: str(self.run_dir),
               "PYTHONPATH": python_path, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        with open(self.log_path, "w") as log:
            self.popen = subprocess.Popen([sys.executable, "-m", "chaos.supervisor.spares.zygote", module], env=env,
                                          pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
        theirs.close()
        self.buffer = b""

    def read(self, timeout_s: float = 60) -> dict:
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self.buffer:
            self.channel.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = self.channel.recv(1 << 16)
            except socket.timeout:
                raise AssertionError(f"the zygote said nothing within {timeout_s} s; its log: "
                                     f"{self.log_path.read_text()}") from None
            assert chunk, f"the zygote closed its channel; its log: {self.log_path.read_text()}"
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def order(self, tmp_path: Path, name: str, **fields) -> dict:
        """A fork order for the script CHILD_SCRIPTS[name] (written to tmp_path), its output and status files
        named after it."""
        script = tmp_path / f"{name}.py"
        script.write_text(CHILD_SCRIPTS.get(name, "print('never run')\n"))
        workdir = tmp_path / f"cwd-{name}"
        workdir.mkdir(exist_ok=True)
        return {"env": {"PATH": os.environ.get("PATH", ""), "CHILD_MARK": str(tmp_path / f"{name}.mark")},
                "cwd": str(workdir), "output": str(tmp_path / f"{name}.out"),
                "status": str(tmp_path / f"{name}.status"), "cgroup_procs": None, "module": None,
                "script": str(script), "args": ["--first", "second"], **fields}

    def ask(self, order: dict) -> dict:
        self.channel.sendall((json.dumps({"fork": order}) + "\n").encode())
        return self.read()

    def close(self) -> None:
        self.channel.close()  # EOF: the zygote exits
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()


@pytest.mark.parametrize("cause", sorted(BAD_IMPORTS))
def test_a_fork_is_refused_after_an_import_that_left_what_a_cold_rank_would_not_have(tmp_path, cause):
    """An import that starts a thread, opens a socket, or draws from torch's generator: the ready message
    names the cause, and every fork order is refused (the rank would start cold) and nothing is forked."""
    module = f"bad_{cause}_import"
    (tmp_path / f"{module}.py").write_text(BAD_IMPORTS[cause])
    zygote = DirectZygote(tmp_path, module)
    try:
        ready = zygote.read(timeout_s=120)
        assert ready["ready"] is True and ready["pid"] == zygote.popen.pid, ready
        problems = " ".join(ready["problems"])
        assert cause in problems, ready["problems"]
        before = psutil.Process(zygote.popen.pid).children()
        answer = zygote.ask(zygote.order(tmp_path, "exit3"))
        assert set(answer) == {"refused"} and cause in answer["refused"], answer
        assert psutil.Process(zygote.popen.pid).children() == before, "a refused order forked anyway"
        assert not (tmp_path / "exit3.out").exists()
    finally:
        zygote.close()


def test_a_forked_child_starts_and_ends_as_an_interpreter_would(tmp_path):
    """One clean zygote (its module imports nothing: fit to fork), four orders: a child's print lands in its
    output, it runs in the order's directory with the order's argv as `__main__`; how it ended (exit code 3;
    1 with the traceback after an exception; atexit handlers run; killed by SIGKILL) is written to the order's
    status file by the zygote that reaps it."""
    (tmp_path / "clean_import.py").write_text(CLEAN_IMPORT)
    zygote = DirectZygote(tmp_path, "clean_import")
    try:
        ready = zygote.read(timeout_s=30)
        assert ready["ready"] is True and ready["problems"] == [], ready

        answers = {}
        for name in ("exit3", "raises", "atexit", "sleeps"):
            asked = time.monotonic()
            answers[name] = zygote.ask(zygote.order(tmp_path, name))
            assert set(answers[name]) == {"pid", "fork_mono"}, answers[name]
            assert asked <= answers[name]["fork_mono"] <= time.monotonic()  # one clock: CLOCK_MONOTONIC
            assert psutil.Process(answers[name]["pid"]).ppid() == zygote.popen.pid
        pids = {name: answer["pid"] for name, answer in answers.items()}
        assert len(set(pids.values())) == 4

        def ended(name: str) -> dict | None:
            path = tmp_path / f"{name}.status"
            return json.loads(path.read_text()) if path.is_file() else None

        assert wait_for(lambda: (tmp_path / "sleeps.out").is_file()
                        and "sleeping" in (tmp_path / "sleeps.out").read_text(), 10)
        child = psutil.Process(pids["sleeps"])
        assert os.getsid(child.pid) == child.pid, "a forked child does not lead its own session"
        os.kill(pids["sleeps"], signal.SIGKILL)

        assert wait_for(lambda: all(ended(name) is not None for name in pids), 10), \
            {name: ended(name) for name in pids}
        assert ended("exit3") == {"pid": pids["exit3"], "returncode": 3, "signal": None}
        assert ended("raises") == {"pid": pids["raises"], "returncode": 1, "signal": None}
        assert ended("atexit") == {"pid": pids["atexit"], "returncode": 0, "signal": None}
        assert ended("sleeps") == {"pid": pids["sleeps"], "returncode": -9, "signal": "SIGKILL"}

        assert "hello from the forked child" in (tmp_path / "exit3.out").read_text()
        assert (tmp_path / "exit3.mark").read_text() == \
            f"{tmp_path / 'cwd-exit3'}|['--first', 'second']|__main__"
        raised = (tmp_path / "raises.out").read_text()
        assert "Traceback (most recent call last)" in raised and "RuntimeError: boom from the forked child" in raised
        assert (tmp_path / "atexit.mark").read_text() == "atexit ran"
        assert "registered" in (tmp_path / "atexit.out").read_text()
        assert not any(running(pid) for pid in pids.values())
        assert zygote.popen.poll() is None, "the zygote died with its children"
    finally:
        zygote.close()
    assert zygote.popen.returncode == 0, zygote.log_path.read_text()


# ---- 3. nothing outlives a killed supervisor -------------------------------------------------------------
ZYGOTE_FORKS_THEN_WAITS = """
import os, sys, time
from pathlib import Path
from chaos.supervisor.spares.fork_server import ForkServer
from chaos.workloads.base import LaunchSpec, WarmStart
tmp = Path({tmp!r})
spec = LaunchSpec(argv=(sys.executable, str(tmp / "sleeps.py")), world_size=1, nodes=1, checkpoint_dir=tmp / "ckpt",
                  train_iters=1, save_interval=1,
                  warm=WarmStart(imports=("clean_import",), script=str(tmp / "sleeps.py")))
server = ForkServer(spec, tmp / "run" / "spares", dict(os.environ), tmp / "run", ready_timeout_s=60)
zygote = server.start()
got = server.start_rank(dict(os.environ), tmp / "rank-0.out", tmp / "rank-0.status", None, rank=0, node=0)
print(zygote, got.pid if got is not None else server.refusal, flush=True)
time.sleep(600)
"""


def test_the_zygote_and_its_forks_die_with_a_killed_supervisor(tmp_path):
    (tmp_path / "clean_import.py").write_text(CLEAN_IMPORT)
    (tmp_path / "sleeps.py").write_text(CHILD_SCRIPTS["sleeps"])
    python_path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    owner = subprocess.Popen([sys.executable, "-c", ZYGOTE_FORKS_THEN_WAITS.format(tmp=str(tmp_path))],
                             stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": python_path})
    try:
        line = owner.stdout.readline()
        zygote, child = (int(p) for p in line.split(maxsplit=1))  # a refusal's words would not parse
        assert running(zygote) and running(child)
        assert psutil.Process(child).ppid() == zygote and psutil.Process(zygote).ppid() == owner.pid
        owner.send_signal(signal.SIGKILL)
        owner.wait(timeout=10)
        assert wait_for(lambda: not running(zygote) and not running(child), 3.0), \
            f"outlived the supervisor: zygote {running(zygote)}, its fork {running(child)}"
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
