"""What a complete checkpoint of a job holds, learned from the job: the files every committed checkpoint of
its uninterrupted run had, as name patterns (each run of digits a wildcard: `__0_3.distcp` -> `__*_*.distcp`,
`mp_rank_01/model_optim_rng.pt` -> `mp_rank_*/model_optim_rng.pt`) with how many files each matched.

A hard-coded list per format goes stale with the next release (Megatron-LM's torch_dist stopped writing
`common.pt`; a list that requires it fails every healthy checkpoint); the learned set moves with the job.
A checkpoint of the faulted run is complete when each pattern matches at least as many files as in the
golden's; files the golden never had are noted, not failed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable, Mapping

_DIGITS = re.compile(r"\d+")


def pattern_of(relative: str) -> str:
    return _DIGITS.sub("*", relative)


def _matcher(pattern: str) -> re.Pattern:
    return re.compile("^" + "[0-9]+".join(re.escape(part) for part in pattern.split("*")) + "$")


def files_of(directory: Path) -> list[str]:
    """Relative posix paths of the regular files under `directory` (links are not followed, nor listed)."""
    out = []
    directory = Path(directory)
    for root, dirs, names in os.walk(directory, followlinks=False):
        for name in names:
            path = Path(root) / name
            if path.is_file() and not path.is_symlink():
                out.append(path.relative_to(directory).as_posix())
    return sorted(out)


def learn(file_lists: Iterable[Iterable[str]]) -> dict[str, int]:
    """pattern -> count that every one of the golden's checkpoints had (the intersection, fewest count)."""
    learned: dict[str, int] | None = None
    for files in file_lists:
        counts: dict[str, int] = {}
        for name in files:
            counts[pattern_of(name)] = counts.get(pattern_of(name), 0) + 1
        if learned is None:
            learned = counts
        else:
            learned = {p: min(c, counts[p]) for p, c in learned.items() if p in counts}
    return dict(sorted((learned or {}).items()))


def problems(directory: Path, patterns: Mapping[str, int]) -> tuple[list[str], list[str]]:
    """(what is missing against the learned patterns, files the golden's checkpoints never had)."""
    present = files_of(directory)
    missing = []
    for pattern, count in patterns.items():
        matcher = _matcher(pattern)
        found = sum(1 for name in present if matcher.match(name))
        if found >= count:
            continue
        if "*" in pattern or count > 1:
            missing.append(f"{pattern}: {found} file(s), every checkpoint of the uninterrupted run had {count}")
        else:
            missing.append(f"{pattern} is missing (every checkpoint of the uninterrupted run had it)")
    matchers = [_matcher(p) for p in patterns]
    unexpected = [name for name in present if not any(m.match(name) for m in matchers)]
    return missing, unexpected
