#!/usr/bin/env python3
"""Supervisor latency and overhead, measured in one run against a torchrun baseline:

  (a) fault detection: SIGKILL sent -> supervisor knows (pidfd), median over --kills kills;
  (b) teardown beyond the grace: the survivors of each killed attempt are blocked in a "collective",
      ignore SIGTERM and need SIGKILL; the time past teardown_grace_s until all are verified gone;
  (c) overhead on a fault-free run: supervise() (torchrun launcher) vs plain
      `python -m torch.distributed.run --nproc-per-node=K --max-restarts=0 --monitor-interval=0.1 ...`,
      median wall time over --repeats runs each, and the ratio;
  (d) baseline: torchrun --max-restarts=1 (monitor interval 0.1 s): SIGKILL a worker -> torchrun's agent
      logs the failure (noticed), and -> a new worker process exists (restarted). The surviving worker
      exits on SIGTERM here; a worker blocked in a collective would add torchrun's 30 s SIGTERM->SIGKILL
      grace on top (--blocked-baseline measures that once).

Usage: scripts/bench_supervisor.py [--nproc 2] [--kills 10] [--repeats 3] [--steps 40] [-- CMD ...]
CMD defaults to the fake trainer (`python tests/trainers/fake_trainer.py {config}`); `{config}` is replaced by
a JSON file with train_iters, save_interval, checkpoint_dir, sync_dir (a custom command may ignore it;
it should use chaos.probe so that kills at step 2 / forward can land). Default run: ~1.5 min on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from chaos.history import load_run_history  # noqa: E402
from chaos.faults.signals import Signal  # noqa: E402
from chaos.plan import PlannedFault, RestartPolicy, Target, Trigger  # noqa: E402
from chaos.supervisor import SupervisorConfig, supervise  # noqa: E402
from chaos.supervisor.launcher import is_python  # noqa: E402
from chaos.workloads import LaunchSpec  # noqa: E402

FAKE_TRAINER = ("{python}", str(REPO / "tests" / "trainers" / "fake_trainer.py"), "{config}")


def command(template: list[str], config: Path) -> tuple[str, ...]:
    return tuple(part.replace("{python}", sys.executable).replace("{config}", str(config)) for part in template)


def write_config(directory: Path, steps: int, **extra) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "trainer.json"
    path.write_text(json.dumps({"train_iters": steps, "save_interval": max(1, steps // 4),
                                "checkpoint_dir": str(directory / "checkpoints"),
                                "sync_dir": str(directory / "sync"), **extra}))
    return path


def spec_for(template: list[str], directory: Path, nproc: int, steps: int) -> LaunchSpec:
    config = write_config(directory, steps)
    return LaunchSpec(argv=command(template, config), world_size=nproc, nodes=1,
                      checkpoint_dir=directory / "checkpoints", train_iters=steps, save_interval=max(1, steps // 4))


# ---- (a) + (b) ---------------------------------------------------------------------------------------
def kills(template, work: Path, nproc: int, count: int, grace_s: float) -> tuple[list[float], list[float]]:
    """`count` attempts, each killed at step 2 / forward (the direct launcher: restarts are cheap)."""
    planned = tuple(PlannedFault(f"kill-{n}", Trigger(step=2, phase="forward", attempt=n), Target("rank", (nproc - 1,)),
                                 Signal("SIGKILL")) for n in range(1, count + 1))
    run_dir = work / "kills"
    spec = spec_for(template, run_dir, nproc, steps=6)
    outcome = supervise(SupervisorConfig(spec, planned, RestartPolicy(max_restarts=count, teardown_grace_s=grace_s,
                                                                      hang_timeout_s=30, startup_timeout_s=120),
                                         "direct", run_dir))
    if outcome.outcome != "complete" or len(outcome.landed) != count:
        raise SystemExit(f"kill run ended {outcome.outcome} with {len(outcome.landed)}/{count} landed; see {run_dir}")
    run = load_run_history(run_dir)
    latencies = [r["detect_latency_s"] for r in run.supervisor_events("death_detected") if r["measured_from"] == "kill"]
    beyond = [r["duration_s"] - grace_s for r in run.supervisor_events("teardown") if r["sigkill"]]
    return latencies, beyond


# ---- (c) ---------------------------------------------------------------------------------------------
def supervised_wall(template, work: Path, nproc: int, steps: int, index: int) -> float:
    run_dir = work / f"supervised-{index}"
    spec = spec_for(template, run_dir, nproc, steps)
    started = time.monotonic()
    outcome = supervise(SupervisorConfig(spec, (), RestartPolicy(max_restarts=0, hang_timeout_s=60,
                                                                 startup_timeout_s=120), "torchrun", run_dir))
    wall = time.monotonic() - started
    if outcome.outcome != "complete":
        raise SystemExit(f"fault-free supervised run ended {outcome.outcome}; see {run_dir}")
    return wall


def torchrun_argv(argv: tuple[str, ...], nproc: int, max_restarts: int, log_dir: Path) -> list[str]:
    entry = list(argv[1:]) if is_python(argv[0]) else ["--no-python", *argv]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            f"--max-restarts={max_restarts}", "--monitor-interval=0.1", f"--log-dir={log_dir}", *entry]


def plain_wall(template, work: Path, nproc: int, steps: int, index: int) -> float:
    directory = work / f"plain-{index}"
    config = write_config(directory, steps)
    argv = torchrun_argv(command(template, config), nproc, 0, directory / "torchrun")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAOS_")}
    started = time.monotonic()
    with open(directory / "torchrun.out", "wb") as log:
        result = subprocess.run(argv, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=600)
    wall = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"plain torchrun failed ({result.returncode}); see {directory}/torchrun.out")
    return wall


# ---- (d) ---------------------------------------------------------------------------------------------
NOTICED = re.compile(r"closing signal|failed \(exitcode|FAILED|restart", re.IGNORECASE)


def torchrun_restart(template, work: Path, nproc: int, index: int, blocked: bool) -> tuple[float, float]:
    """(noticed_s, restarted_s) after SIGKILLing the last local worker of a --max-restarts=1 torchrun."""
    directory = work / f"baseline-{index}"
    config = write_config(directory, 100000, collective=blocked)
    argv = torchrun_argv(command(template, config), nproc, 1, directory / "torchrun")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAOS_")}
    agent = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             start_new_session=True)
    noticed: list[float] = []
    killed_at: list[float] = []
    lines: list[str] = []

    def follow() -> None:
        for raw in agent.stderr:
            line = raw.decode(errors="replace")
            lines.append(line)
            if killed_at and not noticed and NOTICED.search(line):
                noticed.append(time.monotonic())

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    try:
        parent = psutil.Process(agent.pid)
        deadline = time.monotonic() + 120
        workers: list[psutil.Process] = []
        while time.monotonic() < deadline:
            workers = parent.children()
            if len(workers) == nproc:
                break
            time.sleep(0.01)
        time.sleep(1.5)  # past the interpreter start: the workers are training
        victim = sorted(workers, key=lambda p: p.pid)[-1]
        old = {w.pid for w in workers}
        killed_at.append(time.monotonic())
        victim.send_signal(signal.SIGKILL)
        restarted = None
        while time.monotonic() < killed_at[0] + 120:
            fresh = [c for c in parent.children() if c.pid not in old]
            if fresh:
                restarted = time.monotonic()
                break
            time.sleep(0.002)
        if restarted is None or not noticed:
            raise SystemExit(f"torchrun did not restart / log the failure:\n{''.join(lines[-20:])}")
        return noticed[0] - killed_at[0], restarted - killed_at[0]
    finally:
        os.killpg(agent.pid, signal.SIGKILL)  # our own agent's session: the agent and its new workers
        agent.wait()
        _kill_leftover_workers(directory)


def _kill_leftover_workers(directory: Path) -> None:
    """torchrun starts workers in their own sessions; after SIGKILLing the agent, end the workers it left
    (only ours: their command line names this benchmark's config file)."""
    marker = str(directory / "trainer.json")
    for process in psutil.process_iter(["cmdline"]):
        try:
            if marker in " ".join(process.info["cmdline"] or []):
                process.kill()
        except psutil.Error:
            continue


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40, help="fault-free run length for (c)")
    parser.add_argument("--grace", type=float, default=0.5, help="teardown_grace_s for (b)")
    parser.add_argument("--blocked-baseline", action="store_true",
                        help="also measure torchrun's restart when the survivor is blocked (adds ~30 s)")
    parser.add_argument("cmd", nargs="*", help="per-rank command ({python}, {config} are substituted)")
    args = parser.parse_args()
    template = args.cmd or list(FAKE_TRAINER)
    with tempfile.TemporaryDirectory(prefix="chaos-bench-") as temp:
        work = Path(temp)
        started = time.monotonic()
        latencies, beyond = kills(template, work, args.nproc, args.kills, args.grace)
        supervised = [supervised_wall(template, work, args.nproc, args.steps, i) for i in range(args.repeats)]
        plain = [plain_wall(template, work, args.nproc, args.steps, i) for i in range(args.repeats)]
        baseline = [torchrun_restart(template, work, args.nproc, i, blocked=False) for i in range(args.repeats)]
        blocked = torchrun_restart(template, work, args.nproc, 99, blocked=True) if args.blocked_baseline else None
        total = time.monotonic() - started
    noticed = [n for n, _ in baseline]
    restarted = [r for _, r in baseline]
    print(f"chaos supervisor benchmark ({args.nproc} ranks, {os.cpu_count()} CPUs, {' '.join(template)})")
    print(f"(a) detection latency, SIGKILL -> supervisor knows: median {median(latencies) * 1e3:.2f} ms "
          f"(n={len(latencies)}, max {max(latencies) * 1e3:.2f} ms)")
    print(f"(b) teardown beyond the {args.grace:.1f} s grace (blocked survivors, SIGKILL): median "
          f"{median(beyond) * 1e3:.1f} ms (n={len(beyond)}, max {max(beyond) * 1e3:.1f} ms)")
    print(f"(c) fault-free wall time, {args.steps} steps: supervised (torchrun launcher) median "
          f"{median(supervised):.2f} s vs plain torchrun {median(plain):.2f} s: ratio "
          f"{median(supervised) / median(plain):.3f} (n={args.repeats} each)")
    print(f"(d) torchrun --max-restarts=1 baseline: kill -> agent noticed median {median(noticed) * 1e3:.1f} ms, "
          f"kill -> new worker median {median(restarted) * 1e3:.1f} ms (n={args.repeats}); "
          f"chaos detects {median(noticed) / median(latencies):.0f}x sooner")
    if blocked is not None:
        print(f"    with the survivor blocked in a collective: noticed {blocked[0] * 1e3:.1f} ms, "
              f"restarted {blocked[1]:.1f} s (torchrun's SIGTERM->SIGKILL grace)")
    print(f"total benchmark time {total:.1f} s")


if __name__ == "__main__":
    main()
