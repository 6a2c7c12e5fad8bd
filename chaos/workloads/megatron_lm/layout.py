"""Megatron-LM's checkpoints as the tester reads them, per `--ckpt-format`.

Megatron writes `iter_%07d/` in place (no temp directory, no checksums) and then rewrites
`latest_checkpointed_iteration.txt`. Which files make a complete checkpoint is learned from the job (the
files every checkpoint of its uninterrupted run had, kept in the golden: chaos.state.layout); the list below
is only the fallback without such a golden, and matches Megatron-LM's main branch of August 2026 (the
files each format writes last):

    torch_dist    `.metadata` (torch.distributed.checkpoint's, written by the coordinator after every rank's
                  shards), `metadata.json`, and at least one `*.distcp` shard. (`common.pt` is the older
                  layout: the common state now lives inside the DCP checkpoint; requiring it failed every
                  healthy checkpoint of current Megatron-LM.)
    fsdp_dtensor  `.metadata` and at least one `*.distcp` shard (plain DCP)
    torch_dcp     the same as fsdp_dtensor
    torch         `mp_rank_*/model_optim_rng.pt` (legacy: one file per model-parallel rank)

Without checksums, "still intact after the run" means: complete, and every file the follower saw in the
directory when the tracker named it is still there with the same size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from chaos.checkpoint_layout import TRACKER
from chaos.state import layout as state_layout

REQUIRED_FILES = {
    "torch_dist": (".metadata", "metadata.json"),
    "fsdp_dtensor": (".metadata",),
    "torch_dcp": (".metadata",),
    "torch": (),
}


class MegatronLayout:
    tracker_name = TRACKER

    def __init__(self, ckpt_format: str) -> None:
        self.ckpt_format = ckpt_format

    def problems(self, directory: Path, committed: Mapping[str, Any] | None = None,
                 learned: Mapping[str, int] | None = None) -> list[str]:
        directory = Path(directory)
        if not directory.is_dir():
            return [f"{directory.name} does not exist"]
        if learned:
            problems = state_layout.problems(directory, learned)[0]
        else:
            problems = self._fallback_problems(directory)
        for name, size in sorted(((committed or {}).get("files") or {}).items()):
            path = directory / name
            if not path.is_file():
                problems.append(f"{name} is gone (it was there, {size} bytes, when the tracker named this iteration)")
            elif path.stat().st_size != size:
                problems.append(f"{name} has {path.stat().st_size} bytes, {size} when the tracker named this iteration")
        return problems

    def _fallback_problems(self, directory: Path) -> list[str]:
        problems = [f"{name} is missing ({self.ckpt_format} writes it)"
                    for name in REQUIRED_FILES.get(self.ckpt_format, ()) if not (directory / name).is_file()]
        if self.ckpt_format == "torch":
            if not list(directory.glob("mp_rank_*/model_optim_rng.pt")):
                problems.append("no mp_rank_*/model_optim_rng.pt (the torch format's per-rank file)")
        elif not list(directory.glob("*.distcp")):
            problems.append(f"no *.distcp shard file ({self.ckpt_format} writes one per rank at least)")
        return problems
