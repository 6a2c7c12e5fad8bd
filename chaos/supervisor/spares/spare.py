"""A warm spare: `python -m chaos.supervisor.spares.spare MODULE...` imports what a workload's ranks import (torch,
megatron-core, the trainer's modules), says it is ready, and waits for a rank to become.

It does nothing else before its order: no process group, no CUDA context, no RNG use, no file of the run
opened (its output goes to the spare log the supervisor gave it). The order (one JSON line on its channel)
carries exactly what a cold rank gets: the full environment, argv, working directory and output file. The spare
then replaces its environment, points stdout/stderr at the rank's output, and runs the entry point as
`python -m MODULE ARGS` or `python SCRIPT ARGS` would (runpy, run_name "__main__").

Kept to the standard library: anything it imported itself would be imported before the workload's modules.
"""

from __future__ import annotations

import importlib
import json
import os
import runpy
import sys

ENV_ORDER_FD = "CHAOS_SPARE_FD"
"""The fd of the spare's end of a socketpair with the supervisor: `ready` goes out, the order comes in."""


def _read_order(fd: int) -> dict | None:
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return None  # the supervisor closed the pool: leave without running anything
        data += chunk
    return json.loads(data)


def main() -> int:
    channel = int(os.environ.pop(ENV_ORDER_FD))
    for module in sys.argv[1:]:
        importlib.import_module(module)
    try:
        os.write(channel, b"ready\n")  # for the pool's bookkeeping; the order may already be waiting
    except OSError:
        pass  # the supervisor sent the order and closed its end first: the order is still readable
    order = _read_order(channel)
    os.close(channel)
    if order is None:
        return 0
    os.environ.clear()
    os.environ.update(order["env"])
    if order.get("cwd"):
        os.chdir(order["cwd"])
    out = os.open(order["output"], os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(out)
    if order.get("module"):
        sys.argv = [order["module"], *order["args"]]
        runpy.run_module(order["module"], run_name="__main__", alter_sys=True)
    else:
        sys.argv = [order["script"], *order["args"]]
        sys.path.insert(0, os.path.dirname(os.path.abspath(order["script"])))
        runpy.run_path(order["script"], run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
