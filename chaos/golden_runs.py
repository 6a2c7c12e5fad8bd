"""Goldens from uninterrupted runs: recording one (R runs of the job, the spread between them, fingerprints of
the first run's checkpoints and the files a complete checkpoint has) and choosing the one a run compares
with, together with the comparison rule that follows from it (chaos.calibration).

The golden is the first run; the other R - 1 are there to measure it: how far their logged metrics and their
saved state landed from it. Their run directories stay beside the first as evidence (`<work>.repeat-2`...).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from chaos import golden as golden_module
from chaos import preflight, safe_files
from chaos.calibration import SPREAD_FACTOR, Rule, decide_rule, measure
from chaos.errors import InfrastructureError, InputError
from chaos.scenario import Scenario

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class GoldenChoice:
    golden: golden_module.Golden
    path: Path
    rule: Rule
    recorded_here: bool

    @property
    def mode(self) -> str:
        return self.rule.mode


def move_aside(run_dir: Path) -> None:
    """Renames an existing run directory holding an earlier run to <name>.previous-N. A run directory is not
    reusable: the workload resumes from its checkpoints/ and histories are appended to, so a second run there
    would continue the first; renamed, the old run stays as evidence and the new one starts clean. An empty
    directory (pytest's tmp dirs, one made by the caller) holds nothing and is used as is; a non-empty one
    that holds no run is refused (InputError), never renamed (preflight.check_holds_a_run)."""
    run_dir = Path(run_dir)
    if not run_dir.exists() or (run_dir.is_dir() and not any(run_dir.iterdir())):
        return
    preflight.check_holds_a_run(run_dir)
    rename_to_previous(run_dir)


def rename_to_previous(path: Path) -> Path:
    """Renames `path` to the first free <name>.previous-N beside it (an earlier run or selftest kept as
    evidence) and returns the new path."""
    n = 1
    while path.with_name(f"{path.name}.previous-{n}").exists():
        n += 1
    return path.rename(path.with_name(f"{path.name}.previous-{n}"))


def start_run_dir(run_dir: Path) -> None:
    """Creates the run directory (or takes the empty one there) and marks it as chaos's (preflight.RUN_MARKER)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    safe_files.write_file(run_dir / preflight.RUN_MARKER, "a chaos run directory: `chaos run --out` here moves it aside\n",
                          root=run_dir)


def golden_search_dirs(scenario: Scenario) -> list[Path]:
    """Where committed goldens live: goldens/ beside the scenarios folder, in the repo, and in the cwd."""
    candidates = [Path(scenario.base_dir).parent / "goldens", REPO_ROOT / "goldens", Path.cwd() / "goldens"]
    seen, out = set(), []
    for directory in candidates:
        resolved = directory.resolve()
        if resolved not in seen and resolved.is_dir():
            seen.add(resolved)
            out.append(resolved)
    return out


# ---- recording --------------------------------------------------------------------------------------------
def recorded_from_history(run_dir: Path) -> tuple[golden_module.Golden, str | None]:
    """The effective metrics and data hashes (latest attempt wins per step) and the final state hash of a run."""
    from chaos.checkers import views
    from chaos.history import FINAL_STATE, load_run_history

    history = load_run_history(run_dir)
    records = [record for _, (_, record) in views.effective_metrics(history).items()]
    recorded = golden_module.Golden.from_records(records)
    final_hash = None
    for attempt in history.attempts:
        for event in attempt.events(FINAL_STATE, rank=0):
            final_hash = event["state_hash"]
    return recorded, final_hash


def repeat_dir(work_dir: Path, repeat: int) -> Path:
    """Run directory of the repeat-th uninterrupted run (1 = the golden itself)."""
    return work_dir if repeat == 1 else work_dir.with_name(f"{work_dir.name}.repeat-{repeat}")


def record_golden(scenario: Scenario, out_path: Path, work_dir: Path,
                  on_progress: Callable[[dict], None] | None = None, repeats: int | None = None,
                  say: Callable[[str], None] | None = None) -> golden_module.Golden:
    """Runs the workload uninterrupted `repeats` times (default Scenario.golden_repeats) and writes a
    Megatron-format golden of the first run, with the spread the others measured and its checkpoints'
    fingerprints in the sidecar."""
    repeats = repeats or scenario.golden_repeats
    workload, facts = scenario.workload, scenario.facts
    runs: list[tuple[Path, golden_module.Golden, str | None]] = []
    for repeat in range(1, repeats + 1):
        run_dir = repeat_dir(Path(work_dir), repeat)
        if say and repeats > 1:
            say(f"chaos: uninterrupted run {repeat} of {repeats} ({run_dir})")
        recorded, final_hash = _uninterrupted_run(scenario, run_dir, on_progress)
        runs.append((run_dir, recorded, final_hash))
    first_dir, recorded, final_hash = runs[0]
    calibration = measure(recorded.metrics, [r.metrics for _, r, _ in runs[1:]], scenario.numerics_pinned)
    extra: dict[str, Any] = {"train_iters": facts.train_iters, "repeats": repeats}
    hashes = {h for _, _, h in runs}
    if len(hashes) > 1:
        extra["final_state_hashes"] = [h for _, _, h in runs]  # the job's final state is not repeatable
    checkpoints, files, state_note = fingerprint_checkpoints([d for d, _, _ in runs])
    extra.update(state_note)
    meta = golden_module.new_meta(
        golden_module.environment_fingerprint(facts.device, facts.cpu_pins), golden_module.workload_fingerprint(workload),
        final_state_hash=final_hash if len(hashes) == 1 else None, scenario=scenario.name, **extra)
    golden = dataclasses.replace(recorded, meta=meta, calibration=calibration, checkpoints=checkpoints,
                                 checkpoint_files=files)
    golden_module.write_golden(golden, out_path)
    return golden


def _uninterrupted_run(scenario: Scenario, run_dir: Path, on_progress) -> tuple[golden_module.Golden, str | None]:
    from chaos.supervisor import SupervisorConfig, supervise

    preflight.check_run_dir(run_dir)
    preflight.check_machine(scenario.facts, scenario.source, scenario.hosts)
    move_aside(run_dir)
    start_run_dir(run_dir)
    workload, facts = scenario.workload, scenario.facts
    launcher, hosts = golden_launch(scenario)
    outcome = supervise(SupervisorConfig(
        launch=workload.launch(run_dir), faults=(), restart=dataclasses.replace(scenario.restart, max_restarts=0),
        launcher=launcher, run_dir=run_dir, hosts=hosts,
        launcher_args=scenario.launcher_args if launcher == scenario.launcher else ()), on_progress)
    recorded, final_hash = recorded_from_history(run_dir)
    steps = sorted(recorded.metrics.get("lm loss", {}))
    wants_hash = workload.final_state_unavailable is None
    if outcome.outcome != "complete" or steps != list(range(1, facts.train_iters + 1)) or \
            (wants_hash and final_hash is None):
        output = sorted((run_dir / "attempts" / "01").glob("*.out"))
        tail = _output_tail(output[0]) if output else ""
        raise InfrastructureError(
            f"recording the golden failed: the uninterrupted run ended '{outcome.outcome}' with steps "
            f"{steps[:3]}..{steps[-3:] if steps else []}; see {run_dir}/attempts/01/\n{tail}")
    return recorded, final_hash


def _output_tail(path: Path, size: int = 1500) -> str:
    """The last `size` bytes of a rank's output, printable (a trainer's escape sequences do not reach the
    terminal), read without holding the whole file."""
    try:
        fd = safe_files.open_regular(path)
    except OSError:
        return ""
    with open(fd, "rb") as handle:
        handle.seek(max(0, os.fstat(fd).st_size - size))
        return safe_files.printable(handle.read(size).decode("utf-8", errors="replace"))


def fingerprint_checkpoints(run_dirs: list[Path]) -> tuple[dict[int, golden_module.GoldenCheckpoint],
                                                            dict[str, int], dict[str, Any]]:
    """The first run's committed checkpoints as fingerprints, each entry's distance in the other runs'
    checkpoint of the same iteration, and the file patterns every one of them had. A checkpoint chaos cannot
    read is left out, and said so in the returned note (the golden is still usable for everything else)."""
    from chaos.checkers import views
    from chaos.history import load_run_history
    from chaos.state import layout
    from chaos.state.checkpoint import UnsupportedCheckpoint
    from chaos.state.entries import category_of
    from chaos.state.files import CheckpointDamage
    from chaos.state.fingerprint import read_state

    first = run_dirs[0]
    committed = views.committed_checkpoints(load_run_history(first))
    checkpoints: dict[int, golden_module.GoldenCheckpoint] = {}
    file_lists, unreadable = [], {}
    read_bytes, read_seconds = 0, 0.0
    for iteration in sorted(committed):
        name = views.iteration_dir_name(iteration)
        directory = first / "checkpoints" / name
        if not directory.is_dir():
            continue  # retired by keep-last
        file_lists.append(layout.files_of(directory))
        others = [d / "checkpoints" / name for d in run_dirs[1:] if (d / "checkpoints" / name).is_dir()]
        try:
            result = read_state(directory, others, sample=True)
        except (CheckpointDamage, UnsupportedCheckpoint) as error:
            unreadable[str(iteration)] = str(error)
            continue
        read_bytes += result.fingerprint.bytes_read
        read_seconds += result.fingerprint.seconds
        kept = {key: entry for key, entry in result.fingerprint.entries.items() if entry.category != "configuration"}
        # configuration (the job's arguments: paths, the iteration a process started at) is never compared
        spread = {key: _widest(distances) for key, distances in result.spreads.items()
                  if _widest(distances) != 0.0 and (key in kept or category_of(key, "value") != "configuration")}
        entries = {}
        for key, entry in kept.items():
            if not isinstance(spread.get(key), float):
                entry.samples = None  # samples serve tensors that varied between runs only
            entries[key] = entry.to_dict()
        checkpoints[iteration] = golden_module.GoldenCheckpoint(entries, spread)
    note: dict[str, Any] = {"state_read": {"bytes": read_bytes, "seconds": round(read_seconds, 3)}}
    if unreadable:
        note["state_unreadable"] = unreadable
    return checkpoints, layout.learn(file_lists), note


def _widest(distances: list) -> float | str:
    """The largest distance over the other runs ('differs' or 'missing' beat any number)."""
    words = [d for d in distances if isinstance(d, str)]
    if words:
        return "missing" if "missing" in words else "differs"
    return max((float(d) for d in distances), default=0.0)


# ---- choosing -----------------------------------------------------------------------------------------------
def golden_launch(scenario: Scenario) -> tuple[str, str]:
    """(launcher, hosts) of the uninterrupted run a golden is recorded from. On a cluster: the cluster, where
    the numbers are made (a login node may have neither the nodes' CPUs nor their GPUs). Simulated hosts:
    this machine's loopback, since the numbers do not depend on the wire; a private Slurm cluster exists only
    with simulated hosts, so its job is recorded through torchrun, which starts the ranks the same way. A job
    under ft_launcher is recorded under it, with its arguments: a job built for it may need its rank monitors
    (Megatron-LM's --enable-ft-package connects to one at start)."""
    if scenario.hosts == "cluster":
        return scenario.launcher, "cluster"
    return ("torchrun" if scenario.launcher == "slurm" else scenario.launcher), "local"


def golden_file_name(scenario: Scenario) -> str:
    workload = scenario.workload
    env = golden_module.environment_fingerprint(scenario.device, scenario.facts.cpu_pins)
    env_key = json.dumps({k: env.get(k) for k in golden_module.ENVIRONMENT_MATCH_KEYS}, sort_keys=True, default=str)
    env_hash = hashlib.sha256(env_key.encode()).hexdigest()
    return f"{workload.golden_prefix}-{golden_module.workload_fingerprint(workload)[:10]}-{env_hash[:8]}.json"


def rule_for(scenario: Scenario, golden: golden_module.Golden) -> Rule:
    return decide_rule(scenario.golden.mode, golden.calibration, scenario.device, scenario.tolerance or None)


def choose_golden(scenario: Scenario, run_dir: Path, golden_path: Path | None, golden_cache: Path | None,
                  on_progress=None, say: Callable[[str], None] = print, repeats: int | None = None,
                  explicit_golden: golden_module.Golden | None = None) -> GoldenChoice:
    """`explicit_golden`: the named golden (--golden or the scenario's), when the caller has read it already."""
    env = golden_module.environment_fingerprint(scenario.device, scenario.facts.cpu_pins)
    workload_fp = golden_module.workload_fingerprint(scenario.workload)
    explicit = golden_path or scenario.golden.path
    if explicit is not None:
        explicit = Path(explicit)
        golden = explicit_golden or golden_module.read_golden(explicit)
        if golden.meta is None or not golden.meta.environment:
            return GoldenChoice(golden, explicit, rule_for(scenario, golden), False)  # no environment: as is
        mismatches = golden_module.environment_mismatches(golden.meta.environment, env)
        if golden.meta.workload_fingerprint not in (None, workload_fp):
            # Asked for by name: "does my changed job still match the golden of the old one?" is the point
            # of naming one, so it is used; only another machine's bitwise numbers are not comparable.
            say(f"chaos: golden {explicit} was recorded for another workload (fingerprint "
                f"{golden.meta.workload_fingerprint[:12]}, this one {workload_fp[:12]}); comparing against it as asked")
        rule = rule_for(scenario, golden)
        if not mismatches or rule.mode != "exact":
            return GoldenChoice(golden, explicit, rule, False)
        reason = ", ".join(f"{k}: {a} != {b}" for k, (a, b) in mismatches.items())
        say(f"chaos: golden {explicit} was recorded elsewhere ({reason}); recording one here first")
    else:
        for directory in ([golden_cache] if golden_cache else []) + golden_search_dirs(scenario):
            found = golden_module.find_golden(directory, workload_fp, env, warn=say)  # None: a missing directory
            if found is None:
                continue
            try:
                golden = golden_module.read_golden(found)
            except InputError as error:  # a shared cache's damaged entry: skipped, not every run refused
                say(f"chaos: skipping golden {safe_files.one_line(found)}: {safe_files.one_line(error)}")
                continue
            return GoldenChoice(golden, found, rule_for(scenario, golden), False)
        say("chaos: no committed golden matches this workload and environment; recording one here first "
            f"({repeats or scenario.golden_repeats} uninterrupted run(s))")
    target_dir = golden_cache if golden_cache else run_dir / "golden"
    target = target_dir / golden_file_name(scenario)
    golden = record_golden(scenario, target, run_dir / "golden_run", on_progress, repeats, say)
    rule = rule_for(scenario, golden)
    say(f"chaos: recorded golden {target}; comparison rule: {rule.why}")
    return GoldenChoice(golden, target, rule, True)


def state_rule_note(golden: golden_module.Golden) -> str:
    """How the checkpoint state is compared, in words (the report's golden section)."""
    if not golden.checkpoints:
        return "no checkpoint fingerprints in the golden"
    varied = sum(1 for c in golden.checkpoints.values() for v in c.spread.values()
                 if isinstance(v, float) and math.isfinite(v) and v > 0)
    repeats = golden.calibration.repeats if golden.calibration else 1
    if not varied:
        return f"bitwise: every entry equal in {repeats} uninterrupted run(s)" if repeats > 1 else \
            "bitwise: one uninterrupted run of pinned numerics"
    return (f"bitwise where {repeats} uninterrupted runs agreed; within {SPREAD_FACTOR:g} x the measured distance "
            f"for {varied} tensor(s) that varied between them")
