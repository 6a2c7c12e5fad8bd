"""Planted resume bugs for `chaos selftest`, injected from outside into the rank processes of an unmodified
trainer.

The hook directory (this package's parent, with its sitecustomize.py) is put first on PYTHONPATH;
`CHAOS_PLANT=<bug>` names the bug. `install()` plants that one bug and nothing else: the patches reach
torch, torch.distributed.checkpoint and megatron-core only when the trainer imports them (a post-import
hook), so importing this package costs a few milliseconds and pulls in nothing beyond the standard
library. Each process logs what happened to `$CHAOS_PLANT_LOG/plant-<pid>.jsonl` (see log.py), and the
lifecycle every bug hangs on (load begin, first forward after it, first optimizer step after that) is in
events.py. The first attempt of a job loads no checkpoint, so no bug changes anything there.

Standalone by design: the trainer's interpreter may not have chaos installed, so nothing here imports it.
"""

from __future__ import annotations

import importlib
import os

BUGS: tuple[str, ...] = (
    "rng_not_restored",
    "cuda_rng_not_restored",
    "adam_moments_zeroed",
    "adam_step_reset",
    "scheduler_one_step_behind",
    "data_shifted_one_sample",
    "older_checkpoint_loaded",
    "one_ulp_one_tensor",
    "first_step_skipped",
)

_MODULES = {
    "rng_not_restored": "rng",
    "cuda_rng_not_restored": "rng",
    "adam_moments_zeroed": "optimizer",
    "adam_step_reset": "optimizer",
    "scheduler_one_step_behind": "scheduler",
    "data_shifted_one_sample": "data",
    "older_checkpoint_loaded": "tracker",
    "one_ulp_one_tensor": "optimizer",
    "first_step_skipped": "optimizer",
}

_installed: str | None = None


def install(bug: str | None = None) -> None:
    """Plants `bug` (default: $CHAOS_PLANT) in this process. Raises on an unknown bug or a log that
    cannot be written (a bug that cannot be reported is not planted)."""
    global _installed
    from chaos_plants import events, log

    bug = bug if bug is not None else os.environ.get("CHAOS_PLANT", "")
    log.configure(bug)
    if _installed is not None:
        if _installed != bug:
            raise RuntimeError(f"{_installed!r} is already planted in this process")
        return
    if bug not in BUGS:
        raise ValueError(f"unknown bug {bug!r} (known: {', '.join(BUGS)})")
    log.check_writable()
    module = importlib.import_module(f"chaos_plants.{_MODULES[bug]}")
    module.install(bug)
    events.install()
    _installed = bug
    log.record("installed", armed=events.armed)
