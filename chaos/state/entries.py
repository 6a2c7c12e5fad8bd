"""A checkpoint as flat entries: every tensor, and every value that is not a tensor, under a dotted key, with
the category of state it belongs to.

DCP flattens a state dict into keys already (`optimizer.state.<param>.exp_avg`, `rng_state.(0, 0).0.np_rng_state`);
the values it pickles (Megatron's `args`, torch_dist's `common_state`, chaos's `train` and RNG blobs) and a
legacy archive's whole state dict are walked further, so that "the scheduler was not restored" names
`opt_param_scheduler.num_steps`, not one opaque blob.

Categories, the state a resume must bring back (the checks judge these), and two that are only recorded:
  progress       iteration, consumed samples, FLOPs so far
  scheduler      the learning-rate scheduler's state
  rng            every random generator's state (python, numpy, torch CPU and CUDA, the TP tracker)
  optimizer      moments, step counts, fp32 main weights, parameter groups
  model          parameters (and any other tensor)
  configuration  the job's arguments (`args`): paths and run-time facts that differ between runs by design
                 (`args.iteration` is where a process started); only its consumed samples are progress
  other          anything else (checkpoint version, Megatron's rerun state machine): compared, reported, and
                 never the reason a check fails
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any, Iterator

from chaos.state.checkpoint import Checkpoint, Chunk, ObjectItem, TensorItem, tensor_item
from chaos.state.files import CheckpointDamage
from chaos.state.unpickle import (
    ITEM_BYTES, DType, NumpyArray, Opaque, StorageRef, TensorRef, looks_like_pickle, safe_loads,
)

CATEGORIES = ("progress", "scheduler", "rng", "optimizer", "model", "other", "configuration")
"""In the order a divergence is named: the first differing entry by this order is the likeliest cause (a
scheduler not restored changes the parameters too, never the other way round)."""
JUDGED = ("progress", "scheduler", "rng", "optimizer", "model")
"""What a resume must bring back; `other` is reported, `configuration` only recorded."""

PROGRESS_NAMES = {"iteration", "consumed_samples", "consumed_train_samples", "consumed_valid_samples",
                  "skipped_train_samples", "num_floating_point_operations_so_far", "curr_iteration"}
ARGS_PROGRESS = {"consumed_train_samples", "consumed_valid_samples", "skipped_train_samples"}
"""Megatron keeps the consumed samples in `args`; the rest of args is configuration (`args.iteration` is the
iteration the process loaded, 0 in an uninterrupted run)."""
OPTIMIZER_STATE = ("exp_avg_sq", "exp_avg", "step", "fp32_param", "momentum_buffer", "master_param", "param")
_NOISE_TOKENS = {"optimizer", "optim", "state", "module", "model", "distributed"}

MAX_DEPTH = 64
MAX_NODES = 2_000_000
"""A pickle can describe a huge structure with shared references: walks stop there, as damage."""
MAX_PICKLE_NESTING = 3
"""Pickled bytes inside pickled values (chaos's trainer pickles its RNG states) are decoded this deep."""


@dataclass
class Value:
    """A non-tensor entry: its canonical, JSON-able form."""

    key: str
    canonical: Any


def category(key: str) -> str:
    parts = [p for p in re.split(r"[./]", key.lower()) if p]
    leaf = parts[-1] if parts else ""
    if "args" in parts:
        return "progress" if leaf in ARGS_PROGRESS else "configuration"
    if leaf in PROGRESS_NAMES:
        return "progress"
    if any("rng" in p or "random" in p for p in parts):
        return "rng"
    if any("scheduler" in p for p in parts):
        return "scheduler"
    if any(p.startswith("optim") for p in parts):
        return "optimizer"
    if parts and parts[0].startswith("model"):
        return "model"
    return "unknown"


def describe(key: str, kind: str = "tensor") -> str:
    """How a person names an entry: 'optimizer exp_avg of decoder.layers.3.mlp.linear_fc1.weight'."""
    group = category_of(key, kind)
    tokens = [t for t in re.split(r"[./]", key) if t]
    if group == "optimizer":
        state = next((t for t in reversed(tokens) if t in OPTIMIZER_STATE), None)
        rest = ".".join(t for t in tokens if t not in _NOISE_TOKENS and t != state)
        return f"optimizer {state} of {rest}" if state else f"optimizer state {rest}"
    if group == "model":
        return f"parameter {'.'.join(t for t in tokens if t not in _NOISE_TOKENS) or key}"
    if group == "rng":
        return f"RNG state {key}"
    if group == "scheduler":
        return f"scheduler {key}"
    if group == "progress":
        return f"{tokens[-1] if tokens else key} ({key})"
    return key


def category_of(key: str, kind: str) -> str:
    """category() with the default for what matched no rule: a tensor is model state, a value is other."""
    found = category(key)
    if found == "unknown":
        return "model" if kind == "tensor" else "other"
    return found


# ---- flattening ---------------------------------------------------------------------------------------------
def flatten(checkpoint: Checkpoint) -> Iterator[TensorItem | Value]:
    """Every entry of a checkpoint, tensors first as stored, values walked into (see the module docstring)."""
    budget = [MAX_NODES]
    for item in checkpoint.items:
        if isinstance(item, TensorItem):
            yield item
        elif isinstance(item, ObjectItem):
            yield from _walk(item.value, item.key, 0, 0, budget)


def _walk(value: Any, path: str, depth: int, nesting: int, budget: list[int]) -> Iterator[TensorItem | Value]:
    budget[0] -= 1
    if budget[0] < 0 or depth > MAX_DEPTH:
        raise CheckpointDamage(f"{path}: a structure too large or too deep to be a checkpoint's state")
    if isinstance(value, TensorRef):
        yield tensor_item(path, value)
        return
    if isinstance(value, NumpyArray) and _numpy_item(path, value) is not None:
        yield _numpy_item(path, value)
        return
    if looks_like_pickle(value) and nesting < MAX_PICKLE_NESTING:
        try:
            decoded = safe_loads(value)
        except Exception:  # noqa: BLE001 - bytes that only look like a pickle stay bytes
            decoded = None
        if decoded is not None:
            yield from _walk(decoded, path, depth + 1, nesting + 1, budget)
            return
    if isinstance(value, Opaque):
        fields = value.fields()
        inner = value.items or (fields if isinstance(fields, dict) and not value.args and not value.list else None)
        if inner:
            yield from _walk(inner, path, depth + 1, nesting, budget)
            return
    if isinstance(value, dict) and value:
        for key, child in value.items():
            yield from _walk(child, f"{path}.{key}", depth + 1, nesting, budget)
        return
    if isinstance(value, (list, tuple)) and any(_is_structure(v) for v in value):
        for index, child in enumerate(value):
            yield from _walk(child, f"{path}.{index}", depth + 1, nesting, budget)
        return
    yield Value(path, canonical(value, budget))


def _is_structure(value: Any) -> bool:
    return isinstance(value, (dict, list, tuple, TensorRef, NumpyArray, Opaque)) or looks_like_pickle(value)


def _numpy_item(path: str, array: NumpyArray) -> TensorItem | None:
    values = array.values()
    if values is None or array.dtype not in ITEM_BYTES:
        return None
    data = values.astype(values.dtype.newbyteorder("<"), copy=False).tobytes(order="C")
    shape = tuple(int(s) for s in values.shape)
    return TensorItem(path, array.dtype, shape, [Chunk(tuple(0 for _ in shape), shape, lambda: iter([data]))])


def canonical(value: Any, budget: list[int] | None = None, depth: int = 0) -> Any:
    """A JSON-able form that is equal exactly when the values are: what a value entry's hash is taken of."""
    if budget is not None:
        budget[0] -= 1
        if budget[0] < 0:
            raise CheckpointDamage("a value too large to be a checkpoint's state")
    if depth > MAX_DEPTH:
        raise CheckpointDamage("a value nested too deep to be a checkpoint's state")
    nested = depth + 1
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"float": repr(value)}
    if isinstance(value, (bytes, bytearray)):
        return {"bytes": len(value), "sha256": _sha(bytes(value))}
    if isinstance(value, DType):
        return repr(value)
    if isinstance(value, NumpyArray):
        return {"array": value.dtype, "shape": list(value.shape), "sha256": _sha(value.raw or b"")}
    if isinstance(value, TensorRef):
        digest = hashlib.sha256()
        for block in value.storage.archive.tensor_blocks(value):
            digest.update(block)
        return {"tensor": value.dtype, "shape": list(value.shape), "sha256": digest.hexdigest()[:32]}
    if isinstance(value, StorageRef):
        return {"storage": value.dtype, "numel": value.numel}
    if isinstance(value, (list, tuple)):
        return [canonical(v, budget, nested) for v in value]
    if isinstance(value, (set, frozenset)):
        return {"set": sorted((canonical(v, budget, nested) for v in value), key=_dumps)}
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            return {k: canonical(v, budget, nested) for k, v in value.items()}
        return {"pairs": [[canonical(k, budget, nested), canonical(v, budget, nested)] for k, v in value.items()]}
    if isinstance(value, Opaque):
        out: dict[str, Any] = {"object": value.global_name}
        for name in ("args", "state", "items", "list"):
            part = getattr(value, name)
            if part:
                out[name] = canonical(part, budget, nested)
        return out
    return {"repr": repr(value)[:200]}


def value_hash(canonical_value: Any) -> str:
    return _sha(_dumps(canonical_value).encode())


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]
