"""Goldens: the uninterrupted run's numbers, and how a faulted run's numbers are compared with them.

The metrics file is Megatron-LM's own golden format, so Megatron's tools read ours and we read theirs::

    {"lm loss": {"start_step": 1, "end_step": 12, "step_interval": 1, "values": {"1": 10.93, ...}}, ...}

Unlike Megatron we keep every float at full precision (Python's json writes the shortest repr that reads
back to the same double): the CPU oracle is bitwise, and Megatron's 5 rounded digits would hide a drift.
How a faulted run's numbers are compared with these: chaos.comparison.

What Megatron's format has no room for (the environment the numbers came from, the final state hash, the
workload fingerprint, how reproducible the job measured itself to be, and fingerprints of the uninterrupted
run's checkpoints) goes in a sidecar `<stem>.meta.json`.

Pure Python; never imports torch (versions come from importlib.metadata).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import platform
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from functools import reduce
from pathlib import Path
from typing import Any, Callable, Mapping

from chaos import safe_files
from chaos.calibration import Calibration
from chaos.errors import InputError

METRIC_KEYS = {"lm_loss": "lm loss", "grad_norm": "grad norm", "lr": "learning rate",
               "consumed_samples": "consumed samples", "num_zeros": "num-zeros"}
"""History metric field -> golden metric key (the metrics our goldens record; Megatron's spellings)."""

DEFAULT_TOLERANCE = {
    "lm loss": 0.05,
    "num-zeros": 0.20,
    "iteration-time": 0.05,
    "mem-allocated-bytes": 0.05,
    "mem-max-allocated-bytes": 0.05,
}
"""Megatron-LM's relative tolerances (atol 0) for its non-deterministic comparison."""

FALLBACK_TOLERANCE = 0.05
"""For a metric Megatron has no tolerance for (grad norm, learning rate, ...) when one is compared in megatron mode."""

KNOWN_METRICS = tuple(dict.fromkeys([*DEFAULT_TOLERANCE, *METRIC_KEYS.values()]))

NONDETERMINISTIC_METRICS = ("iteration-time", "mem-allocated-bytes", "mem-max-allocated-bytes")
"""Never compared bitwise: they measure the machine, not the math."""

ITERATION_TIME_STEPS = (30, 45)
"""Megatron compares iteration-time as the median over these steps (inclusive), not step by step."""

DATA_HASHES_KEY = "data_hashes"
"""GoldenMeta.extra key of the per-step data hashes ({"step": hash}): Megatron's metrics file holds numbers only."""

LOSS_WINDOWS_KEY = "loss_windows"
"""GoldenMeta.extra key of the steps whose lm loss is a mean over several iterations ({"step": [steps]}): how
Megatron-LM prints the second iteration each process logs (see chaos.checkers.trajectory)."""

CALIBRATION_KEY = "calibration"
"""GoldenMeta.extra key of the spread measured between repeated uninterrupted runs (chaos.calibration)."""

CHECKPOINTS_KEY = "checkpoints"
"""GoldenMeta.extra key of the uninterrupted run's checkpoints: iteration -> {entries: key -> fingerprint,
spread: key -> distance measured between repeats} (chaos.state)."""

CHECKPOINT_FILES_KEY = "checkpoint_files"
"""GoldenMeta.extra key of the files a complete checkpoint of the job has: name pattern -> count
(chaos.state.layout)."""

ENVIRONMENT_MATCH_KEYS = ("torch", "megatron-core", "python", "machine", "cpu_numerics", "device")
"""What must agree for a committed golden to be valid here (bitwise numbers change with any of these).
cpu_numerics is the pinned CPU kernel choice where the workload pins one and the CPU can honour it (goldens
then travel between CPU types), else the CPU's own instruction-set flags (they decide torch's kernels)."""

PIN_REQUIRES = {"avx2": ("avx2", "fma")}
"""ATEN_CPU_CAPABILITY value -> CPU flags it needs; without them torch silently falls back to other kernels."""


# ---- the golden --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GoldenMeta:
    environment: dict[str, Any] = field(default_factory=dict)
    """environment_fingerprint() of the machine that recorded it."""
    workload_fingerprint: str | None = None
    final_state_hash: str | None = None
    created: str | None = None
    """ISO 8601, UTC."""
    scenario: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    """Anything else a recorder wants to keep (train_iters, command line...)."""


@dataclass
class Golden:
    metrics: dict[str, dict[int, float]]
    """metric name (`lm loss`) -> step -> value."""
    meta: GoldenMeta | None = None
    data_hashes: dict[int, str] = field(default_factory=dict)
    """step -> the batch's data hash (the probe's `data_hash`). Stored in the meta sidecar's extra
    (DATA_HASHES_KEY); empty for goldens recorded without it (Megatron's, older ones of ours)."""
    loss_windows: dict[int, tuple[int, ...]] = field(default_factory=dict)
    """step -> the steps its lm loss is the mean of, where that is not just the step itself (Megatron-LM's
    printed loss of the second iteration a process logs). Stored in the sidecar's extra (LOSS_WINDOWS_KEY)."""
    calibration: Calibration | None = None
    """How far repeated uninterrupted runs landed from this one (None: recorded without repeats, or Megatron's)."""
    checkpoints: dict[int, "GoldenCheckpoint"] = field(default_factory=dict)
    """iteration -> what the uninterrupted run saved there (empty: no fingerprints recorded)."""
    checkpoint_files: dict[str, int] = field(default_factory=dict)
    """name pattern -> count: the files every committed checkpoint of the uninterrupted run had."""

    @classmethod
    def from_records(cls, records: list[Mapping[str, Any]], meta: GoldenMeta | None = None) -> "Golden":
        """From history `metrics` records (lm_loss, grad_norm, lr, consumed_samples, num_zeros, data_hash,
        loss_window per step); a later record of a step replaces an earlier one, a None value is skipped."""
        metrics: dict[str, dict[int, float]] = {}
        data_hashes: dict[int, str] = {}
        loss_windows: dict[int, tuple[int, ...]] = {}
        for record in records:
            step = int(record["step"])
            for field_name, metric in METRIC_KEYS.items():
                if record.get(field_name) is not None:
                    metrics.setdefault(metric, {})[step] = float(record[field_name])
            if record.get("data_hash") is not None:
                data_hashes[step] = str(record["data_hash"])
            if record.get("loss_window"):
                loss_windows[step] = tuple(int(s) for s in record["loss_window"])
            else:
                loss_windows.pop(step, None)  # a later attempt logged this step plainly
        return cls(metrics=metrics, meta=meta, data_hashes=data_hashes, loss_windows=loss_windows)


@dataclass
class GoldenCheckpoint:
    """The uninterrupted run's checkpoint at one iteration, as fingerprints (chaos.state.fingerprint.Entry
    as dicts; the `configuration` category is not kept) and the distance each entry showed between repeats
    (absent = identical)."""

    entries: dict[str, dict[str, Any]]
    spread: dict[str, float | str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        spread = {k: (v if not isinstance(v, float) or math.isfinite(v) else repr(v)) for k, v in self.spread.items()}
        return {"entries": self.entries, "spread": spread}


def meta_path(path: str | Path) -> Path:
    """goldens/x.json -> goldens/x.meta.json."""
    path = Path(path)
    return path.with_name(f"{path.stem}.meta.json")


def read_golden(path: str | Path) -> Golden:
    """Reads a golden (ours or Megatron-LM's); its sidecar meta is read when present."""
    path = Path(path)
    data = _read_json(path)
    if not isinstance(data, dict) or not data:
        raise InputError(str(path), "", "expected a mapping of metric name -> {start_step, end_step, step_interval, "
                                        "values}")
    metrics: dict[str, dict[int, float]] = {}
    for metric, body in data.items():
        if not isinstance(body, dict) or not isinstance(body.get("values"), dict):
            raise InputError(str(path), metric, "expected {start_step, end_step, step_interval, values: {step: number}}")
        values: dict[int, float] = {}
        for step, value in body["values"].items():
            try:
                step_number = int(step)
            except (TypeError, ValueError):
                raise InputError(str(path), f"{metric}.values.{step}", "expected an integer step as key") from None
            values[step_number] = _number(value, str(path), f"{metric}.values.{step}")
        metrics[metric] = dict(sorted(values.items()))
    meta = None
    data_hashes: dict[int, str] = {}
    loss_windows: dict[int, tuple[int, ...]] = {}
    calibration: Calibration | None = None
    checkpoints: dict[int, GoldenCheckpoint] = {}
    checkpoint_files: dict[str, int] = {}
    sidecar = meta_path(path)
    if sidecar.is_file():
        meta = read_meta(sidecar)
        # Moved out of meta.extra into the Golden's own fields, so a read golden equals the one written.
        extra = dict(meta.extra)
        if DATA_HASHES_KEY in extra:
            data_hashes = _data_hashes(extra.pop(DATA_HASHES_KEY), str(sidecar))
        if LOSS_WINDOWS_KEY in extra:
            loss_windows = _loss_windows(extra.pop(LOSS_WINDOWS_KEY), str(sidecar))
        if CALIBRATION_KEY in extra:
            calibration = _calibration(extra.pop(CALIBRATION_KEY), str(sidecar))
        if CHECKPOINTS_KEY in extra:
            checkpoints = _checkpoints(extra.pop(CHECKPOINTS_KEY), str(sidecar))
        if CHECKPOINT_FILES_KEY in extra:
            checkpoint_files = _checkpoint_files(extra.pop(CHECKPOINT_FILES_KEY), str(sidecar))
        meta = replace(meta, extra=extra)
    return Golden(metrics=metrics, meta=meta, data_hashes=data_hashes, loss_windows=loss_windows,
                  calibration=calibration, checkpoints=checkpoints, checkpoint_files=checkpoint_files)


def _calibration(value: Any, source: str) -> Calibration:
    try:
        return Calibration.from_dict(value)
    except (ValueError, TypeError, KeyError) as error:
        raise InputError(source, f"extra.{CALIBRATION_KEY}", f"not a calibration ({error})") from None


def _checkpoints(value: Any, source: str) -> dict[int, GoldenCheckpoint]:
    where = f"extra.{CHECKPOINTS_KEY}"
    if not isinstance(value, dict):
        raise InputError(source, where, "expected a mapping of iteration -> {entries, spread}")
    out: dict[int, GoldenCheckpoint] = {}
    for iteration, body in value.items():
        try:
            number = int(iteration)
        except (TypeError, ValueError):
            raise InputError(source, f"{where}.{iteration}", "expected an integer iteration as key") from None
        if not isinstance(body, dict) or not isinstance(body.get("entries"), dict) or \
                not isinstance(body.get("spread", {}), dict):
            raise InputError(source, f"{where}.{iteration}", "expected {entries: {key: fingerprint}, spread: {...}}")
        for key, entry in body["entries"].items():
            if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
                raise InputError(source, f"{where}.{iteration}.entries.{key}", "expected a fingerprint with a sha256")
        spread = {str(k): _spread_value(v, source, f"{where}.{iteration}.spread.{k}")
                  for k, v in body.get("spread", {}).items()}
        out[number] = GoldenCheckpoint(entries=dict(body["entries"]), spread=spread)
    return dict(sorted(out.items()))


def _spread_value(value: Any, source: str, where: str) -> float | str:
    if isinstance(value, str) and value in ("inf", "differs", "missing"):
        return float("inf") if value == "inf" else value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(source, where, f"expected a distance or 'differs', got {value!r:.40}")
    return float(value)


def _checkpoint_files(value: Any, source: str) -> dict[str, int]:
    where = f"extra.{CHECKPOINT_FILES_KEY}"
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
                                              and v >= 1 for k, v in value.items()):
        raise InputError(source, where, "expected a mapping of file name pattern -> count (>= 1)")
    return dict(value)


def _loss_windows(value: Any, source: str) -> dict[int, tuple[int, ...]]:
    where = f"extra.{LOSS_WINDOWS_KEY}"
    if not isinstance(value, dict):
        raise InputError(source, where, "expected a mapping of step -> list of steps")
    out: dict[int, tuple[int, ...]] = {}
    for step, steps in value.items():
        if not (isinstance(steps, list) and steps and all(isinstance(s, int) and not isinstance(s, bool) for s in steps)):
            raise InputError(source, f"{where}.{step}", f"expected a non-empty list of integer steps, got {steps!r}")
        try:
            out[int(step)] = tuple(steps)
        except (TypeError, ValueError):
            raise InputError(source, f"{where}.{step}", "expected an integer step as key") from None
    return dict(sorted(out.items()))


def _data_hashes(value: Any, source: str) -> dict[int, str]:
    where = f"extra.{DATA_HASHES_KEY}"
    if not isinstance(value, dict):
        raise InputError(source, where, "expected a mapping of step -> data hash")
    out: dict[int, str] = {}
    for step, digest in value.items():
        try:
            step_number = int(step)
        except (TypeError, ValueError):
            raise InputError(source, f"{where}.{step}", "expected an integer step as key") from None
        if not isinstance(digest, str):
            raise InputError(source, f"{where}.{step}", f"expected a string, got {digest!r}")
        out[step_number] = digest
    return dict(sorted(out.items()))


def read_meta(path: str | Path) -> GoldenMeta:
    path = Path(path)
    data = _read_json(path)
    if not isinstance(data, dict):
        raise InputError(str(path), "", "expected a mapping (golden meta)")
    known = {f for f in GoldenMeta.__dataclass_fields__}
    unknown = sorted(set(data) - known)
    if unknown:
        raise InputError(str(path), unknown[0], f"unknown key; expected one of {sorted(known)}")
    for key in ("environment", "extra"):
        if not isinstance(data.get(key, {}), dict):
            raise InputError(str(path), key, "expected a mapping")
    return GoldenMeta(**data)


def write_golden(golden: Golden, path: str | Path) -> Path:
    """Writes the metrics file in Megatron's format (full precision) and, if there is meta or there are data
    hashes, its sidecar (the data hashes go in its extra: Megatron's format has no room for strings)."""
    path = Path(path)
    if not path.parent.is_dir():
        safe_files.make_dirs(path.parent)  # new directories below the nearest existing one, no link followed
    out: dict[str, Any] = {}
    for metric, values in golden.metrics.items():
        steps = sorted(values)
        if not steps:
            continue
        out[metric] = {
            "start_step": steps[0],
            "end_step": steps[-1],
            "step_interval": _interval(steps),
            "values": {str(step): float(values[step]) for step in steps},
        }
    _write_json(path, out)
    meta = golden.meta
    if golden.data_hashes:
        meta = meta or GoldenMeta()
        hashes = {str(step): golden.data_hashes[step] for step in sorted(golden.data_hashes)}
        meta = replace(meta, extra={**meta.extra, DATA_HASHES_KEY: hashes})
    if golden.loss_windows:
        meta = meta or GoldenMeta()
        windows = {str(step): list(golden.loss_windows[step]) for step in sorted(golden.loss_windows)}
        meta = replace(meta, extra={**meta.extra, LOSS_WINDOWS_KEY: windows})
    if golden.calibration is not None:
        meta = meta or GoldenMeta()
        meta = replace(meta, extra={**meta.extra, CALIBRATION_KEY: golden.calibration.to_dict()})
    if golden.checkpoint_files:
        meta = meta or GoldenMeta()
        meta = replace(meta, extra={**meta.extra, CHECKPOINT_FILES_KEY: dict(golden.checkpoint_files)})
    if golden.checkpoints:
        meta = meta or GoldenMeta()
        checkpoints = {str(i): golden.checkpoints[i].to_dict() for i in sorted(golden.checkpoints)}
        meta = replace(meta, extra={**meta.extra, CHECKPOINTS_KEY: checkpoints})
    if meta is not None:
        # One line per checkpoint entry rather than per field: a sidecar holds hundreds of fingerprints.
        _write_json(meta_path(path), asdict(meta), indent=1 if golden.checkpoints else 4)
    return path


def new_meta(environment: dict[str, Any], workload_fingerprint: str | None, final_state_hash: str | None = None,
             scenario: str | None = None, **extra: Any) -> GoldenMeta:
    """Meta stamped with the current time."""
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return GoldenMeta(environment=environment, workload_fingerprint=workload_fingerprint,
                      final_state_hash=final_state_hash, created=created, scenario=scenario, extra=dict(extra))


def _interval(steps: list[int]) -> int:
    """Megatron's files say how values are spaced; 1 unless every gap shares a larger divisor."""
    gaps = [b - a for a, b in zip(steps, steps[1:])]
    return reduce(math.gcd, gaps) if gaps else 1


def _number(value: Any, source: str, where: str) -> float:
    if isinstance(value, str) and value.strip().lower() in ("nan", "inf", "-inf", "infinity", "-infinity"):
        return float(value)  # Megatron writes "nan" for a diverged step
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(source, where, f"expected a number, got {value!r}")
    return float(value)


GOLDEN_FILE_LIMIT = 64 * safe_files.MiB
"""The largest golden or sidecar read: a sidecar with a large job's checkpoint fingerprints is a few MiB."""


def _read_json(path: Path) -> Any:
    # A link the user named (--golden, a scenario's golden:) is followed to its file; what is read must be a
    # regular file of bounded size: /dev/zero or a FIFO given as a golden is refused, never read forever.
    try:
        data = safe_files.read_bytes(Path(path).resolve(), limit=GOLDEN_FILE_LIMIT)
    except OSError as error:
        why = str(error).removeprefix(f"{Path(path).resolve()}: ") if isinstance(error, safe_files.UnsafeFile) \
            else (error.strerror or str(error))
        raise InputError(str(path), "", f"cannot read golden: {why}") from None
    try:
        return json.loads(data.decode("utf-8"))
    except json.JSONDecodeError as error:
        raise InputError(str(path), f"line {error.lineno}, column {error.colno}", f"invalid JSON: {error.msg}") from None
    except UnicodeDecodeError as error:
        raise InputError(str(path), f"byte {error.start}", "not UTF-8; a golden is JSON text") from None
    except RecursionError:
        raise InputError(str(path), "", "invalid JSON: nested too deeply to be a golden") from None


def _write_json(path: Path, data: Any, indent: int = 4) -> None:
    # temp + rename: a golden is committed to the repo; a half-written one must never be left behind. The
    # temp file is a new one (O_EXCL, random name): a link planted in a shared cache is never written through.
    safe_files.write_file(path, json.dumps(data, indent=indent) + "\n", root=path.parent)


# ---- fingerprints --------------------------------------------------------------------------------------
def environment_fingerprint(device: str = "cpu", cpu_pins: Mapping[str, str] | None = None) -> dict[str, Any]:
    """What the numbers depend on besides the workload, read without importing torch. `cpu_pins`: the
    environment the workload's ranks get to fix their CPU kernels (WorkloadFacts.cpu_pins)."""
    cpu_model, cpu_flags = _cpu_info()
    flags_hash = hashlib.sha256(" ".join(sorted(cpu_flags)).encode()).hexdigest()[:16]
    return {
        "torch": _version("torch"),
        "megatron-core": _version("megatron-core"),
        "transformer-engine": _version("transformer-engine") or _version("transformer_engine"),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_model": cpu_model,
        "cpu_flags_hash": flags_hash,
        "cpu_numerics": _cpu_numerics(cpu_pins or {}, cpu_flags, flags_hash),
        "device": device,
        "gpu_model": _gpu_model() if device == "cuda" else None,
    }


def _cpu_numerics(pins: Mapping[str, str], cpu_flags: list[str], flags_hash: str) -> str:
    capability = pins.get("ATEN_CPU_CAPABILITY")
    needed = PIN_REQUIRES.get(str(capability).lower(), ())
    if capability and needed and set(needed) <= set(cpu_flags):
        return "pinned " + " ".join(f"{key}={value}" for key, value in sorted(pins.items()))
    return f"cpu flags {flags_hash}"


def environment_mismatches(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """key -> (recorded, current) for every ENVIRONMENT_MATCH_KEYS difference (python compared as major.minor;
    gpu_model only when both sides know it). Empty = the golden is valid here."""
    out: dict[str, tuple[Any, Any]] = {}
    for key in ENVIRONMENT_MATCH_KEYS:
        a, b = recorded.get(key), current.get(key)
        if key == "python":
            a, b = _major_minor(a), _major_minor(b)
        if a != b:
            out[key] = (a, b)
    if recorded.get("gpu_model") and current.get("gpu_model") and recorded["gpu_model"] != current["gpu_model"]:
        out["gpu_model"] = (recorded["gpu_model"], current["gpu_model"])
    return out


def workload_fingerprint(workload: Any) -> str:
    """sha256 of the canonical JSON of what decides a workload's numbers (its fingerprint_mapping())."""
    canonical = json.dumps(workload.fingerprint_mapping(), sort_keys=True, separators=(",", ":"), default=list)
    return hashlib.sha256(canonical.encode()).hexdigest()


def find_golden(directory: str | Path, workload_fp: str, env: Mapping[str, Any],
                warn: Callable[[str], None] | None = None) -> Path | None:
    """The newest golden in `directory` recorded for this workload in this environment, or None. A sidecar
    that cannot be read (damaged, a link, a FIFO) skips its golden with a warning through `warn`: a golden
    cache is shared, and one bad entry must not refuse every run."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    found: list[tuple[str, str, Path]] = []
    for path in directory.glob("*.json"):
        if path.name.endswith(".meta.json") or path.is_symlink():
            continue
        sidecar = meta_path(path)
        if not sidecar.is_file() or sidecar.is_symlink():
            continue
        try:
            meta = read_meta(sidecar)
        except InputError as error:
            if warn is not None:
                warn(f"chaos: skipping golden {safe_files.one_line(path)}: {safe_files.one_line(error)}")
            continue
        if not isinstance(meta.environment, dict) or not isinstance(meta.workload_fingerprint, (str, type(None))):
            continue
        if meta.workload_fingerprint == workload_fp and not environment_mismatches(meta.environment, env):
            found.append((str(meta.created or ""), path.name, path))
    return max(found)[2] if found else None


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _major_minor(version: Any) -> Any:
    return ".".join(str(version).split(".")[:2]) if version else version


def _cpu_info() -> tuple[str | None, list[str]]:
    model, flags = None, []
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return platform.processor() or None, []
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model", "hardware") and model is None:
            model = value.strip()
        elif key in ("flags", "features") and not flags:  # x86: flags; arm64: Features
            flags = value.split()
    return model, flags


def _gpu_model() -> str | None:
    for info in sorted(Path("/proc/driver/nvidia/gpus").glob("*/information")):
        try:
            for line in info.read_text(encoding="utf-8", errors="replace").splitlines():
                if line.lower().startswith("model:"):
                    return line.split(":", 1)[1].strip()
        except OSError:
            continue
    return None
