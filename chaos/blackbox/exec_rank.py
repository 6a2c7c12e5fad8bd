"""`python -m chaos.blackbox.exec_rank -- COMMAND...`: how a rank of an unmodified trainer is started.

It tells the supervisor which process is which rank, then *becomes* the trainer with exec(2): same pid, so
the pidfd the supervisor opens on it is the trainer's, and a signal sent to it reaches the trainer itself,
whether the direct launcher or a torchrun agent started it. Before the exec it points stdout and stderr
at the attempt's `rank-<r>.out` (what chaos follows: under torchrun the worker would otherwise share its
agent's output) and removes chaos's variables from the environment, so the trainer sees nothing of chaos.

Standard library only, and no chaos import beyond chaos.control: it runs once per rank per attempt and
must cost milliseconds, not the seconds a torch import takes.
"""

from __future__ import annotations

import os
import socket
import sys

from chaos import control

IN_PROCESS = "--in-process"
"""Set by a warm spare (chaos.supervisor.spares.spare) that already imported the trainer's modules: `PYTHON SCRIPT
ARGS` runs in this interpreter (runpy) instead of an exec, exactly as `python SCRIPT ARGS` would run it."""

EXIT_REJECTED = 70
"""The supervisor did not accept this process as a rank (it closed the connection): nothing is started."""


def _hello(path: str, rank: int, attempt: int) -> bool:
    """True once the supervisor answered the hello (it verified this pid as rank `rank`); False when it
    refused (closed the connection) or is not there."""
    try:
        with control.connect(path) as sock:
            control.send(sock, {"type": "hello", "rank": rank, "pid": os.getpid(), "attempt": attempt,
                                "observation": "log", "token": os.environ.get(control.ENV_RUN_TOKEN), "host": socket.gethostname()})
            return control.LineReader(sock).read_message() is not None
    except OSError:
        return False


def _redirect_output(history_dir: str, rank: int) -> None:
    fd = os.open(os.path.join(history_dir, f"rank-{rank}.out"), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    for target in (1, 2):
        os.dup2(fd, target)
    os.close(fd)


def main(argv: list[str]) -> int:
    in_process = argv[:1] == [IN_PROCESS]
    if in_process:
        argv = argv[1:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        print("usage: python -m chaos.blackbox.exec_rank -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    rank = int(os.environ.get("RANK", "0"))
    socket_path = os.environ.pop(control.ENV_SOCKET, None)
    attempt, history_dir = control.rank_attempt(os.environ)
    os.environ.pop(control.ENV_HISTORY_DIR, None)
    os.environ.pop(control.ENV_ATTEMPT, None)
    if socket_path and not _hello(socket_path, rank, attempt):
        print(f"chaos: rank {rank} (pid {os.getpid()}) was not accepted by the supervisor; not starting",
              file=sys.stderr)
        return EXIT_REJECTED
    if history_dir:
        _redirect_output(history_dir, rank)
    if in_process:
        return _run_script_here(argv)
    try:
        os.execvp(argv[0], argv)
    except OSError as error:
        print(f"chaos: cannot start {argv[0]!r}: {error}", file=sys.stderr)
        return 127
    return 0  # not reached: exec replaced this process


def _run_script_here(argv: list[str]) -> int:
    import runpy

    script = argv[1]
    sys.argv = [script, *argv[2:]]
    sys.path[0] = os.path.dirname(os.path.abspath(script))  # what `python SCRIPT` puts first
    runpy.run_path(script, run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
