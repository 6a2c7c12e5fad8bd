"""The fork server (restart.warm: fork): `python -m chaos.supervisor.spares.zygote MODULE...` imports what a
workload's ranks import, once per run, and forks every rank of every attempt from there, the first included.

Why: on a small machine a restart's seconds are new interpreters importing torch and megatron-core (2.7
CPU-seconds per rank, four ranks on two cores), and a warm spare only moves those CPU-seconds (it needs idle
cores to hide them). A fork costs milliseconds and shares the imported pages copy-on-write, as Python's own
multiprocessing forkserver does with its preload list and as DataLoader workers are forked after `import torch`.

What a fork may copy is only what a cold rank would have after its own imports, so the zygote does nothing
else: no process group, no CUDA context, no tensor op (no OpenMP or BLAS pool warmed), no use of torch's
generator, no file or socket of the run. That is checked, not assumed: before every fork the zygote looks at
itself (`hygiene`) and refuses the fork, saying why, when it has more than one thread (a fork copies only the
forking thread: a pool's locks held by another would stay held in the child), the CUDA driver mapped, a
socket or pipe open besides its channel, a file of the run open, or torch's default generator moved. A refused
rank starts cold (the supervisor records the reason).

The child takes exactly what a cold rank gets: its own session, the attempt's cgroup, death with its parent
(PR_SET_PDEATHSIG; the zygote dies with the supervisor, so the chain holds), the full environment of the order
(the run token included), working directory, stdin from /dev/null, stdout and stderr on the rank's output,
and the entry point run as `python -m MODULE ARGS` or `python SCRIPT ARGS` runs it (runpy, `__main__`); it ends
as an interpreter would (non-daemon threads joined, atexit handlers run, streams flushed, the exit code of
SystemExit or 1 with the traceback). The zygote reaps its children and writes how each ended where the order
said (the supervisor is not their parent, so it cannot wait for them itself).

Protocol, JSON lines on a socketpair with the supervisor (the zygote's only channel):
  zygote -> {"ready": true, "pid", "import_s", "problems": [...]}       once its imports are done
  sup    -> {"fork": {"env", "cwd", "output", "status", "cgroup_procs", "module" | "script", "args"}}
  zygote -> {"pid", "fork_mono"} | {"refused": "why"}                   one answer per order, in order
  EOF    -> the zygote exits (its children, torn down by then, die with it).

Standard library only until the workload's modules are imported: anything it imported first would be
imported before them, unlike in a cold rank.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import select
import signal
import sys
import time
from pathlib import Path

ENV_CHANNEL_FD = "CHAOS_ZYGOTE_FD"
"""The fd of the zygote's end of its socketpair with the supervisor."""
ENV_RUN_DIR = "CHAOS_ZYGOTE_RUN_DIR"
"""The run directory: no file under it may be open in the zygote at a fork."""
REAP_EVERY_S = 0.05
"""How often the zygote reaps its children (and writes how they ended) while it waits for orders."""


# ---- hygiene -------------------------------------------------------------------------------------------
def _thread_names() -> list[str]:
    names = []
    for tid in sorted(os.listdir("/proc/self/task"), key=int):
        try:
            with open(f"/proc/self/task/{tid}/comm") as handle:
                names.append(f"{tid} {handle.read().strip()}")
        except OSError:
            names.append(tid)
    return names


def _open_fds(channel: int) -> list[tuple[int, str]]:
    found = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd in (0, 1, 2, channel):
            continue
        try:
            found.append((fd, os.readlink(f"/proc/self/fd/{fd}")))
        except OSError:
            continue  # the listing's own descriptor, closed by now
    return found


def _generator_untouched() -> bool:
    """torch's default CPU generator is as `import torch` left it: seeded (from the OS's entropy), never drawn
    from nor seeded again."""
    torch = sys.modules.get("torch")
    if torch is None or not hasattr(torch, "get_rng_state"):
        return True
    fresh = torch.Generator()
    fresh.manual_seed(torch.initial_seed())
    return torch.get_rng_state().tolist() == fresh.get_state().tolist()


def _seed_as_an_import_does() -> None:
    """In the child: the generators an import seeds from the OS's entropy, seeded so again (a fork would
    otherwise give every rank the zygote's seeds; Python's `random` reseeds itself after a fork)."""
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "seed"):
        torch.seed()
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None and hasattr(numpy_random, "seed"):
        numpy_random.seed()


def quiesce_blas_pools() -> None:
    """OpenBLAS (numpy's, loaded with torch) starts its thread pool when it is loaded, unless OMP_NUM_THREADS
    or OPENBLAS_NUM_THREADS is 1. It is made to be forked: its own pthread_atfork handler
    (openblas_fork_handler) stops the pool before every fork, and the child starts it again, the size its
    environment says, at its first BLAS call. That handler is called here a moment before the fork, so the
    hygiene check sees what fork(2) will."""
    import ctypes

    with open("/proc/self/maps") as handle:
        fields = [line.split(None, 5) for line in handle if "openblas" in line]
    paths = {field[5].strip() for field in fields if len(field) == 6}
    for path in sorted(paths):
        try:
            library = ctypes.CDLL(path, mode=os.RTLD_NOLOAD)
            shutdown = library.blas_thread_shutdown_
        except (OSError, AttributeError):
            continue
        shutdown()


def hygiene(channel: int, run_dir: str) -> list[str]:
    """What would make a rank forked now unlike a cold one; empty: fit to fork."""
    quiesce_blas_pools()
    problems = []
    threads = _thread_names()
    if len(threads) != 1:
        problems.append(f"{len(threads)} threads ({', '.join(threads)}): an import started a thread (e.g. an "
                        "OpenMP pool warmed by a tensor op; OMP_NUM_THREADS=1 keeps pools from starting), and "
                        "a fork copies only the forking one")
    with open("/proc/self/maps") as handle:
        if "libcuda.so" in handle.read():
            problems.append("the CUDA driver is mapped (an import initialised CUDA): a forked child cannot use it")
    for fd, target in _open_fds(channel):
        if target.startswith(("socket:", "pipe:")):
            problems.append(f"fd {fd} is a {target.split(':')[0]} ({target}): every child would share it")
        elif run_dir and (target == run_dir or target.startswith(run_dir.rstrip("/") + "/")):
            problems.append(f"fd {fd} is a file of the run ({target})")
    if not _generator_untouched():
        problems.append("torch's default generator was drawn from or seeded at import: a cold rank's is not")
    return problems


# ---- the child -----------------------------------------------------------------------------------------
def _exit_code(code: object) -> int:
    """What the interpreter makes of SystemExit(code)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _print_traceback() -> None:
    """The traceback as the interpreter prints it for `python SCRIPT`: without the frames of this module and
    runpy above the entry point (a follower reading the rank's output sees what a cold rank prints)."""
    import runpy

    kind, value, traceback = sys.exc_info()
    ours = (os.path.abspath(__file__), os.path.abspath(runpy.__file__), "<frozen runpy>")
    while traceback is not None and traceback.tb_next is not None and traceback.tb_frame.f_code.co_filename in ours:
        traceback = traceback.tb_next
    sys.excepthook(kind, value, traceback)


def _run_entry(order: dict) -> int:
    import runpy

    try:
        if order.get("module"):
            sys.argv = [order["module"], *order["args"]]
            runpy.run_module(order["module"], run_name="__main__", alter_sys=True)
        else:
            sys.argv = [order["script"], *order["args"]]
            sys.path[0] = os.path.dirname(os.path.abspath(order["script"]))  # what `python SCRIPT` puts first
            runpy.run_path(order["script"], run_name="__main__")
    except SystemExit as exit_:
        return _exit_code(exit_.code)
    except KeyboardInterrupt:
        _print_traceback()
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # as the interpreter ends on one: killed by SIGINT
        os.kill(os.getpid(), signal.SIGINT)
        return 130
    except BaseException:  # noqa: BLE001 - printed as the interpreter would, exit 1
        _print_traceback()
        return 1
    return 0


def _finish(code: int) -> None:
    """The interpreter's end, as a process it started would have it (this one must not return into the
    zygote's loop): non-daemon threads joined, atexit handlers, streams flushed."""
    import atexit
    import threading

    try:
        threading._shutdown()  # type: ignore[attr-defined]  # what Py_FinalizeEx calls first
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def become_rank(order: dict, channel: int, zygote_pid: int) -> None:
    """In the forked child: everything a cold launch gives a rank, then its entry point. Never returns."""
    try:
        os.close(channel)
        os.setsid()  # its own session, as every launched process (a group signal reaches its children)
        from chaos.ownership.lifeline import child_setup

        child_setup(zygote_pid, order.get("cgroup_procs"))()  # the cgroup first, then death with the zygote
        out = os.open(order["output"], os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(out)
        os.environ.clear()
        os.environ.update(order["env"])
        if order.get("cwd"):
            os.chdir(order["cwd"])
        _seed_as_an_import_does()
        gc.enable()
    except BaseException as error:  # noqa: BLE001 - nothing of the zygote's loop may run in the child
        try:
            os.write(2, f"chaos zygote: could not become a rank: {error!r}\n".encode())
        finally:
            os._exit(70)
    _finish(_run_entry(order))


# ---- the server ----------------------------------------------------------------------------------------
class Zygote:
    def __init__(self, channel: int, run_dir: str) -> None:
        self.channel = channel
        self.run_dir = run_dir
        self.children: dict[int, str] = {}
        """pid -> where to write how it ended."""
        self.buffer = b""

    def send(self, message: dict) -> None:
        os.write(self.channel, (json.dumps(message) + "\n").encode())

    def reap(self) -> None:
        from chaos.supervisor.hosts.slurm_task import record_exit  # the Slurm task shim's record, the same file

        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            path = self.children.pop(pid, None)
            if path is None:
                continue
            try:
                record_exit(pid, status, Path(path))
            except OSError as error:  # the supervisor then reads what the pidfd tells (no exit code)
                print(f"chaos zygote: could not record how {pid} ended in {path}: {error}", flush=True)

    def fork(self, order: dict) -> dict:
        problems = hygiene(self.channel, self.run_dir)
        if problems:
            return {"refused": "; ".join(problems)}
        sys.stdout.flush()  # nothing buffered here may be written again by the child
        sys.stderr.flush()
        zygote_pid = os.getpid()
        pid = os.fork()
        if pid == 0:
            become_rank(order, self.channel, zygote_pid)
        self.children[pid] = order["status"]
        return {"pid": pid, "fork_mono": time.monotonic()}

    def serve(self) -> None:
        while True:
            readable, _, _ = select.select([self.channel], [], [], REAP_EVERY_S)
            self.reap()
            if not readable:
                continue
            chunk = os.read(self.channel, 1 << 20)
            if not chunk:
                return  # the supervisor is done with us
            self.buffer += chunk
            while b"\n" in self.buffer:
                line, self.buffer = self.buffer.split(b"\n", 1)
                self.send(self.fork(json.loads(line)["fork"]))


def main(modules: list[str]) -> int:
    channel = int(os.environ.pop(ENV_CHANNEL_FD))
    run_dir = os.environ.pop(ENV_RUN_DIR, "")
    started = time.monotonic()
    for module in modules:
        importlib.import_module(module)
    gc.collect()
    gc.freeze()  # what the imports made stays out of every collection: the children's pages stay shared
    # what reaping needs, imported now: after the workload's modules
    import chaos.supervisor.hosts.slurm_task  # noqa: F401
    import chaos.ownership.lifeline  # noqa: F401
    zygote = Zygote(channel, run_dir)
    try:
        zygote.send({"ready": True, "pid": os.getpid(), "import_s": round(time.monotonic() - started, 3),
                     "problems": hygiene(channel, run_dir)})
        zygote.serve()
    except (BrokenPipeError, ConnectionResetError):
        pass  # the supervisor went away
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
