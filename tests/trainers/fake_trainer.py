"""A pure-Python stand-in for a distributed trainer (no torch), started like the real one:

    python tests/trainers/fake_trainer.py config.json

It reads RANK / WORLD_SIZE, reports through chaos.probe, and behaves like a synchronous data-parallel job:
every step ends in a file-based barrier (a stand-in for an all-reduce), so when a peer dies the survivors
block exactly like ranks stuck in a gloo collective. Checkpoints are committed atomically (temp dir ->
rename -> tracker replaced by rename) with the same probe points as the GPT-3 workload. SIGTERM / SIGINT
are graceful: finish the step, agree on stopping at the barrier, save, `train_end preempted`, exit 0.

Config (JSON): train_iters, save_interval, checkpoint_dir, sync_dir, step_time_s (0.02),
global_batch_size (8), collective (true), spawn_child (false), crash ({rank, step, attempt, code}),
delays ([{rank, step, attempt, seconds, busy}]: a straggler sleeps before starting that step; with busy, it
says so first through probe.busy).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo, when not installed

from chaos.probe import get_probe  # noqa: E402

TRACKER = "latest_checkpointed_iteration.txt"
PHASES = ("data", "forward", "backward", "optimizer")


def fake_loss(step: int) -> float:
    return round(10.0 / (1.0 + 0.05 * step), 6)


def next_state(state: str, step: int) -> str:
    return hashlib.sha256(f"{state}:{step}".encode()).hexdigest()[:16]


def write_atomically(path: Path, text: str) -> None:
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)


class Trainer:
    def __init__(self, config: dict) -> None:
        self.config = config
        self.rank = int(os.environ.get("RANK", "0"))
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.probe = get_probe()
        self.checkpoint_dir = Path(config["checkpoint_dir"])
        # Fresh barrier files per launch: a supervisor attempt or a torchrun restart never sees old votes.
        run_id = "-".join(os.environ.get(name, "0") for name in
                          ("CHAOS_ATTEMPT", "MASTER_PORT", "TORCHELASTIC_RESTART_COUNT"))
        self.sync_dir = Path(config["sync_dir"]) / run_id
        self.sync_dir.mkdir(parents=True, exist_ok=True)
        self.step_time_s = float(config.get("step_time_s", 0.02))
        self.stopping = False
        self.child: subprocess.Popen | None = None
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        # Recorded from the handler itself, like the GPT-3 workload does (the history writer allows it).
        self.probe.signal_received(signum)
        self.stopping = True

    # ---- the "collective" ----------------------------------------------------------------------------
    def barrier(self, name: str, vote: bool = False) -> bool:
        """Every rank writes its vote, then waits for all the others: True when any voted to stop."""
        if not self.config.get("collective", True):
            return vote
        write_atomically(self.sync_dir / f"{name}.rank-{self.rank}", "stop" if vote else "go")
        paths = [self.sync_dir / f"{name}.rank-{r}" for r in range(self.world_size)]
        while not all(p.exists() for p in paths):
            time.sleep(0.002)  # a dead peer blocks us here forever, like a gloo collective
        return any(p.read_text() == "stop" for p in paths)

    # ---- checkpoints --------------------------------------------------------------------------------
    def save(self, step: int, state: str) -> None:
        probe = self.probe
        probe.point("checkpoint.begin", step)
        final = self.checkpoint_dir / f"iter_{step:07d}"
        temp = self.checkpoint_dir / f".tmp.iter_{step:07d}"
        temp.mkdir(parents=True, exist_ok=True)
        for index in (1, 2):
            shard = {"step": step, "rank": self.rank, "index": index, "state": state,
                     "consumed_samples": step * self.config.get("global_batch_size", 8),
                     "payload": "x" * (256 * index)}
            write_atomically(temp / f"rank-{self.rank}-shard-{index}.json", json.dumps(shard))
            probe.point("checkpoint.shard", step, index=index)
        self.barrier(f"save-{step}")
        if self.rank == 0:
            probe.point("checkpoint.metadata", step)
            write_atomically(temp / "metadata.json", json.dumps({"iteration": step, "world_size": self.world_size}))
            probe.point("checkpoint.commit", step)
            if final.exists():
                shutil.rmtree(final)
            os.rename(temp, final)
            probe.point("checkpoint.tracker", step)
            write_atomically(self.checkpoint_dir / TRACKER, str(step))
        self.barrier(f"committed-{step}")
        probe.checkpoint_committed(step, str(final))

    def load(self) -> tuple[int, str]:
        tracker = self.checkpoint_dir / TRACKER
        if not tracker.exists():
            self.probe.checkpoint_loaded(0, None)
            return 0, "init"
        newest = int(tracker.read_text().strip())
        candidates = sorted((int(p.name[5:]) for p in self.checkpoint_dir.glob("iter_*") if p.name[5:].isdigit()
                             and int(p.name[5:]) <= newest), reverse=True)
        for iteration in candidates:
            path = self.checkpoint_dir / f"iter_{iteration:07d}"
            self.probe.point("checkpoint.load", iteration)
            try:
                shards = [json.loads((path / f"rank-{self.rank}-shard-{i}.json").read_text()) for i in (1, 2)]
                if {s["state"] for s in shards} != {shards[0]["state"]} or shards[0]["step"] != iteration:
                    raise ValueError("shards disagree")
            except (OSError, ValueError, KeyError) as error:
                self.probe.checkpoint_rejected(iteration, str(path), str(error))
                continue
            self.probe.checkpoint_loaded(iteration, str(path))
            return iteration, shards[0]["state"]
        self.probe.checkpoint_loaded(0, None)
        return 0, "init"

    # ---- training -----------------------------------------------------------------------------------
    def train(self) -> int:
        config = self.config
        if config.get("spawn_child"):
            self.child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
            self.probe.event("child_spawned", pid=self.child.pid)
        start, state = self.load()
        iters, interval = int(config["train_iters"]), int(config["save_interval"])
        crash = config.get("crash") or {}
        last_saved = start
        probe = self.probe
        for step in range(start + 1, iters + 1):
            for delay in config.get("delays", ()):
                if (delay["rank"], delay["step"], delay.get("attempt", 1)) == (self.rank, step, probe.attempt):
                    if delay.get("busy"):  # long silent work the trainer announces (probe.busy)
                        probe.busy("a long silent phase")
                    time.sleep(float(delay["seconds"]))
                    if delay.get("busy"):
                        probe.busy_end("a long silent phase")
            probe.step_begin(step)
            for phase in PHASES:
                with probe.phase(phase, step):
                    time.sleep(self.step_time_s / len(PHASES))
            if crash.get("rank") == self.rank and crash.get("step") == step and \
                    crash.get("attempt", 1) == probe.attempt:
                os._exit(int(crash.get("code", 3)))
            state = next_state(state, step)
            probe.metrics(step, lm_loss=fake_loss(step), grad_norm=1.0, lr=1e-3,
                          consumed_samples=step * config.get("global_batch_size", 8))
            stop = self.barrier(f"step-{step}", vote=self.stopping)
            probe.step_end(step)
            if step % interval == 0 or (stop and step != last_saved):
                self.save(step, state)
                last_saved = step
            if stop:
                probe.train_end(step, "preempted")
                return 0
        probe.final_state(iters, state)
        probe.train_end(iters, "complete")
        return 0

    def close(self) -> None:
        if self.child is not None:
            self.child.kill()
            self.child.wait()


def main() -> int:
    config = json.loads(Path(sys.argv[1]).read_text())
    trainer = Trainer(config)
    try:
        return trainer.train()
    finally:
        trainer.close()


if __name__ == "__main__":
    sys.exit(main())
