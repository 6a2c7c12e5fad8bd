"""Fingerprints of a checkpoint's entries, streamed: what a golden keeps of its checkpoints (so they need not
be kept) and what a faulted run's checkpoints are compared by.

A tensor's fingerprint: sha256 of its bytes (with dtype, shape and chunk layout), L2 norm and non-finite
count (a float64 accumulator), its element count, and where asked a fixed sample of
its elements (positions drawn from the key, the same in every run): two fingerprints estimate the relative L2
distance of two tensors that are not bitwise equal (chaos.state.compare). A value's fingerprint: the sha256
of its canonical form, and the form itself when short.

Memory: one block (chaos.state.files.BLOCK_BYTES) per tensor stream, never a whole tensor or checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from chaos.state.checkpoint import Checkpoint, TensorItem, open_checkpoint
from chaos.state.entries import Value, category_of, flatten, value_hash

SAMPLES = 128
"""Elements sampled per tensor (only where the golden measured that tensor to vary between runs)."""
SHORT_VALUE_CHARS = 200

_NUMPY = {"float32": "<f4", "float64": "<f8", "float16": "<f2", "int64": "<i8", "int32": "<i4", "int16": "<i2",
          "int8": "i1", "uint8": "u1", "bool": "?", "uint16": "<u2", "uint32": "<u4", "uint64": "<u8"}


@dataclass
class Entry:
    kind: str
    """tensor | value"""
    category: str
    sha256: str
    dtype: str | None = None
    shape: list[int] | None = None
    numel: int | None = None
    norm: float | None = None
    """L2 norm over the finite elements (float64)."""
    nonfinite: int | None = None
    samples: list[float] | None = None
    value: Any = None
    """A value's canonical form, or a one-element tensor's number, when short: for messages."""

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: Any) -> "Entry":
        if not isinstance(data, dict) or data.get("kind") not in ("tensor", "value") or \
                not isinstance(data.get("sha256"), str) or not isinstance(data.get("category"), str):
            raise ValueError(f"not a state entry: {data!r:.120}")
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class StateFingerprint:
    form: str
    """dcp | torch"""
    entries: dict[str, Entry]
    files: dict[str, int] = field(default_factory=dict)
    bytes_read: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"form": self.form, "entries": {k: e.to_dict() for k, e in self.entries.items()}}

    @classmethod
    def from_dict(cls, data: Any) -> "StateFingerprint":
        if not isinstance(data, dict) or not isinstance(data.get("entries"), dict):
            raise ValueError("expected {form, entries}")
        return cls(form=str(data.get("form")), entries={str(k): Entry.from_dict(v) for k, v in data["entries"].items()})


@dataclass
class ReadResult:
    fingerprint: StateFingerprint
    spreads: dict[str, list[float | str]] = field(default_factory=dict)
    """key -> per other checkpoint: relative L2 distance (0.0 = bitwise equal), 'differs' (a value), 'missing'."""


def read_state(directory: Path, others: Iterable[Path] = (), sample: bool | Iterable[str] = False) -> ReadResult:
    """Fingerprints the checkpoint in `directory` and, for each of `others` (the same job's checkpoints of the
    same iteration), how far each entry of theirs is from this one. `sample`: True = every tensor, or the keys
    whose elements to sample. Raises chaos.state.files.CheckpointDamage / checkpoint.UnsupportedCheckpoint."""
    started = time.monotonic()
    wanted = sample if isinstance(sample, bool) else set(sample)
    others = list(others)
    with open_checkpoint(directory) as checkpoint:
        opened = [open_checkpoint(other) for other in others]
        try:
            their_entries = [_by_key(o) for o in opened]
            entries: dict[str, Entry] = {}
            spreads: dict[str, list[float | str]] = {}
            read = 0
            for item in flatten(checkpoint):
                key = item.key
                theirs = [e.get(key) for e in their_entries]
                if isinstance(item, TensorItem):
                    sampled = wanted is True or (wanted is not False and key in wanted)
                    entry, distances = _tensor(item, theirs, sampled)
                    read += item.nbytes * (1 + sum(1 for t in theirs if isinstance(t, TensorItem)))
                else:
                    entry = _value(item)
                    distances = [_value_distance(item, t) for t in theirs]
                entries[key] = entry
                if others:
                    spreads[key] = distances
            for index, other in enumerate(their_entries):
                for key in other:
                    if key not in entries:
                        spreads.setdefault(key, ["missing"] * len(opened))
            fingerprint = StateFingerprint(checkpoint.form, entries, dict(checkpoint.files), read,
                                           time.monotonic() - started)
            return ReadResult(fingerprint, spreads)
        finally:
            for other in opened:
                other.close()


def _by_key(checkpoint: Checkpoint) -> dict[str, TensorItem | Value]:
    return {item.key: item for item in flatten(checkpoint)}


# ---- tensors -------------------------------------------------------------------------------------------------
class _Stats:
    """Running statistics of a tensor's elements, fed block by block."""

    def __init__(self, item: TensorItem, sampled: bool, hashed: bool = True) -> None:
        self.item = item
        self.digest = hashlib.sha256(f"{item.dtype}|{list(item.shape)}".encode()) if hashed else None
        self.numeric = item.dtype in _NUMPY or item.dtype == "bfloat16"
        self.squares = self.total = 0.0
        self.nonfinite = 0
        self.positions = _sample_positions(item.key, item.numel) if sampled else None
        self.samples: dict[int, float] = {}

    def chunk(self, offsets: tuple, sizes: tuple) -> None:
        if self.digest is not None:
            self.digest.update(f"|{list(offsets)}|{list(sizes)}|".encode())
        self._local = _local_samples(self.positions, self.item.shape, offsets, sizes) if self.positions is not None \
            else None
        self._element = 0

    def block(self, data: bytes) -> None:
        if self.digest is not None:
            self.digest.update(data)
        if not self.numeric:
            return
        values = as_numbers(self.item.dtype, data)
        start = self._element
        self._element += len(values)
        if values.dtype.kind == "f":
            finite = np.isfinite(values)
            if not finite.all():
                self.nonfinite += int(values.size - np.count_nonzero(finite))
                values = np.where(finite, values, 0)
        wide = values.astype(np.float64)
        self.squares += float(np.dot(wide, wide))
        if wide.size == 1:
            self.total += float(wide[0])
        if self._local:
            for local, global_position in self._local:
                if start <= local < self._element:
                    self.samples[global_position] = float(values[local - start])

    def entry(self) -> Entry:
        item = self.item
        digest = self.digest.hexdigest()[:32] if self.digest is not None else ""
        entry = Entry("tensor", category_of(item.key, "tensor"), digest, item.dtype, list(item.shape), item.numel)
        if self.numeric:
            entry.norm, entry.nonfinite = math.sqrt(self.squares), self.nonfinite
            if item.numel == 1:
                entry.value = self.total if not self.nonfinite else None  # a step count, a scalar: shown as is
        if self.positions is not None:
            entry.samples = [self.samples.get(int(p), float("nan")) for p in self.positions]
        return entry


def as_numbers(dtype: str, data: bytes) -> np.ndarray:
    """Raw little-endian bytes as numbers: bfloat16 widened to float32 (its upper half)."""
    if dtype == "bfloat16":
        return (np.frombuffer(data, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
    return np.frombuffer(data, dtype=_NUMPY[dtype])


def _tensor(item: TensorItem, theirs: list, sampled: bool) -> tuple[Entry, list[float | str]]:
    stats = _Stats(item, sampled)
    # A distance is a float tensor's; integers (RNG states, counters) are equal or they are not.
    floating = item.dtype.startswith("float") or item.dtype == "bfloat16"
    comparable = [t if isinstance(t, TensorItem) and _same_layout(item, t) else None for t in theirs]
    differences = [0.0] * len(theirs)
    # The other runs' norms and samples too: a faulted run is later judged by the estimate these allow
    # (chaos.state.compare), so the spread is measured by it as well as exactly, and the larger kept.
    their_stats = [_Stats(t, sampled, hashed=False) if t is not None and floating else None for t in comparable]
    golden_squares = 0.0
    for index, chunk in enumerate(item.chunks):
        stats.chunk(chunk.offsets, chunk.sizes)
        for other_stats in their_stats:
            if other_stats is not None:
                other_stats.chunk(chunk.offsets, chunk.sizes)
        streams = [iter(t.chunks[index].blocks()) if t is not None else None for t in comparable]
        for block in chunk.blocks():
            stats.block(block)
            if not any(s is not None for s in streams):
                continue
            mine = as_numbers(item.dtype, block).astype(np.float64) if floating else None
            if mine is not None:
                golden_squares += float(np.dot(mine, mine))
            for n, stream in enumerate(streams):
                if stream is None:
                    continue
                other = next(stream, b"")
                if their_stats[n] is not None:
                    their_stats[n].block(other)
                if other == block:
                    continue
                if mine is None or len(other) != len(block):
                    differences[n] = math.inf
                    continue
                delta = mine - as_numbers(item.dtype, other).astype(np.float64)
                delta = np.nan_to_num(delta, nan=math.inf, posinf=math.inf, neginf=math.inf)
                differences[n] += float(np.dot(delta, delta))
    entry = stats.entry()
    distances: list[float | str] = []
    for n, t in enumerate(theirs):
        if not isinstance(t, TensorItem):
            distances.append("missing" if t is None else "differs")
        elif comparable[n] is None:
            distances.append("differs")  # another dtype, shape or chunking: not the same state
        else:
            exact = _relative(differences[n], golden_squares)
            estimate = estimated_distance(entry, their_stats[n].entry()) if their_stats[n] is not None and exact else None
            distances.append(max(exact, estimate or 0.0))
    return entry, distances


def estimated_distance(golden: Entry, actual: Entry) -> float | None:
    """Relative L2 distance of two tensors from their fingerprints alone: the larger of the norms' relative
    difference (a lower bound of the true distance) and the distance over the sampled elements scaled to the
    whole tensor (unbiased where the difference is spread out, as noise is; high-variance where a few large
    elements dominate, which is why a golden's spread is measured with this same estimate too). None when
    neither is available."""
    if golden.norm is None or actual.norm is None or golden.shape != actual.shape:
        return None
    if golden.norm == 0.0:
        return 0.0 if actual.norm == 0.0 else math.inf
    estimates = [abs(actual.norm - golden.norm) / golden.norm]
    if golden.samples and actual.samples and len(golden.samples) == len(actual.samples) and golden.numel:
        pairs = [(g, a) for g, a in zip(golden.samples, actual.samples) if math.isfinite(g) and math.isfinite(a)]
        if pairs:
            mean_square = math.fsum((a - g) ** 2 for g, a in pairs) / len(pairs)
            estimates.append(math.sqrt(mean_square * golden.numel) / golden.norm)
    return max(estimates)


def _relative(squared_difference: float, squared_norm: float) -> float:
    if squared_difference == 0.0:
        return 0.0
    if squared_norm == 0.0 or math.isinf(squared_difference):
        return math.inf
    return math.sqrt(squared_difference / squared_norm)


def _same_layout(a: TensorItem, b: TensorItem) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and \
        [(c.offsets, c.sizes) for c in a.chunks] == [(c.offsets, c.sizes) for c in b.chunks]


def _sample_positions(key: str, numel: int) -> np.ndarray:
    if numel <= SAMPLES:
        return np.arange(numel, dtype=np.int64)
    seed = int(hashlib.sha256(key.encode()).hexdigest()[:16], 16)
    return np.sort(np.random.default_rng(seed).choice(numel, size=SAMPLES, replace=False)).astype(np.int64)


def _local_samples(positions, shape: tuple, offsets: tuple, sizes: tuple) -> list[tuple[int, int]]:
    """(element index inside the chunk, global flat position) of the sampled positions the chunk holds."""
    if positions is None or not len(positions):
        return []
    if not shape:
        return [(0, 0)]
    index = np.array(np.unravel_index(positions, shape))  # (ndim, n)
    low = np.array(offsets)[:, None]
    high = low + np.array(sizes)[:, None]
    inside = np.all((index >= low) & (index < high), axis=0)
    if not inside.any():
        return []
    local = np.ravel_multi_index(tuple(index[:, inside] - low), sizes)
    return list(zip((int(i) for i in local), (int(p) for p in positions[inside])))


# ---- values --------------------------------------------------------------------------------------------------
def _value(item: Value) -> Entry:
    entry = Entry("value", category_of(item.key, "value"), value_hash(item.canonical))
    text = json.dumps(item.canonical, sort_keys=True)
    if len(text) <= SHORT_VALUE_CHARS:
        entry.value = item.canonical
    return entry


def _value_distance(item: Value, other: Any) -> float | str:
    if other is None:
        return "missing"
    if not isinstance(other, Value):
        return "differs"
    return 0.0 if value_hash(other.canonical) == value_hash(item.canonical) else "differs"
