"""Scenario YAML -> chaos.scenario.model objects, and back.

Validation happens here and only here: every error is an InputError naming the file, the field path
(`faults[2].target.rank`), what was expected and, where a close spelling exists, the fix
("did you mean SIGKILL?"). Unknown keys are errors: a misspelt key silently ignored would make a
scenario test something other than what its author meant.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from pathlib import Path
from typing import Any, Mapping

from chaos.config_fields import FieldReader, read_dataclass
from chaos.config_fields import join as _join
from chaos.errors import InputError, show
from chaos.golden import KNOWN_METRICS
from chaos import faults
from chaos.faults.signals import SIGNALS
from chaos.plan import PROCESSES, RestartPolicy, Trigger
from chaos.scenario.model import CHECK_NAMES, ELASTIC, ELASTIC_SETS, GOLDEN_MODES, HOSTS, LAUNCHERS, MAX_GOLDEN_REPEATS, RESTARTS_BY, GoldenSpec, Scenario
from chaos.schedule.specs import FaultSpec, RandomFaults, ScriptedFault, TargetSpec
from chaos.scenario.dump import scenario_to_mapping
from chaos.scenario.overrides import override_value, set_dotted
from chaos.scenario.yaml_text import parse_yaml, read_scenario_text
from chaos.workloads import Workload, workload_from_mapping
from chaos.workloads.base import WorkloadFacts

TOP_KEYS = ("name", "description", "seed", "workload", "launcher", "launcher_args", "hosts", "faults", "restart",
            "golden", "tolerance", "accept_state_differences", "checks")
TRIGGER_KEYS = ("step", "phase", "index", "attempt", "after_s", "delay_s")
TARGET_KEYS = ("rank", "ranks", "node", "all", "random")
TARGET_PROCESS_KEY = "process"
RANDOM_KEYS = ("count", "steps", "phases", "ranks", "signals", "attempt", "mtbf_s", "until_s")
GOLDEN_KEYS = ("path", "mode", "repeats")
NAME_PATTERN = re.compile(r"(?!\.)[\w.+-]{1,100}")
MAX_RESTARTS = 1000
"""Each restart is a new attempt of the whole job; more than this is a typo, and an MTBF plan expands to one
fault per restart when it is validated."""


# ---- typed readers: chaos.config_fields (FieldReader, here _Fields: the `read` of every reader below) ------
_Fields = FieldReader


# ---- public API ----------------------------------------------------------------------------------------
def load_scenario(path: str | Path, overrides: Mapping[str, Any] | None = None) -> Scenario:
    """Reads and validates a scenario file; `name` defaults to the file's stem. `overrides` are dotted keys
    (see apply_overrides: the CLI's parsed --set, pytest marker kwargs)."""
    path = Path(path)
    text = read_scenario_text(path)
    return apply_overrides(load_scenario_text(text, str(path), base_dir=path.resolve().parent), overrides or {})


def load_scenario_text(text: str, source: str, base_dir: str | Path | None = None) -> Scenario:
    """Validates scenario YAML text. `source` names it in errors (and gives the default name);
    relative paths resolve against base_dir (default: the directory of `source`, if it exists)."""
    data = parse_yaml(text, source)
    if data is None:
        raise InputError(source, "", "empty scenario; expected a mapping with at least `workload:`")
    if base_dir is None:
        parent = Path(source).parent
        base_dir = parent.resolve() if parent.is_dir() else Path.cwd()
    return load_scenario_mapping(data, source, base_dir)


def load_scenario_mapping(data: Any, source: str, base_dir: str | Path | None = None) -> Scenario:
    """Validates an already-parsed scenario document (what scenario_to_mapping returns)."""
    read = _Fields(source)
    base_dir = Path(base_dir) if base_dir is not None else Path.cwd()
    top = read.mapping(data, "", TOP_KEYS)

    default_name = re.sub(r"[^\w.+-]", "-", Path(source).stem).lstrip(".")[:100] or "scenario"
    name = read.string(top.get("name", default_name), "name")
    if not NAME_PATTERN.fullmatch(name):
        # the name becomes the default run directory's name: no path separators, no hidden files, no controls
        raise read.error("name", f"expected letters, digits, '.', '_', '+' or '-' (not first '.'), at most 100, "
                                 f"got {show(name)}")
    description = read.string(top.get("description", "") or "", "description").strip()
    seed = read.integer(top.get("seed", 0), "seed")
    launcher = read.choice(top.get("launcher", "direct"), "launcher", LAUNCHERS)
    hosts = read.choice(top.get("hosts", "local"), "hosts", HOSTS)
    launcher_args = _launcher_args(read, top.get("launcher_args", []), launcher)
    if launcher == "ft_launcher" and hosts != "local":
        raise read.error("hosts", f"launcher: ft_launcher runs on this machine only (hosts: local); got hosts: {hosts}")

    if "workload" not in top:
        raise read.error("workload", "missing; expected the system under test, e.g. workload: {preset: tiny_cpu} "
                                     "or workload: {kind: megatron_lm, ...}")
    workload_mapping = top["workload"]
    workload = workload_from_mapping(workload_mapping, source, "workload", base_dir)

    # `restart:` with nothing after it is YAML's null and means the defaults; any other empty or false value
    # (faults: {}, golden: 0) is a mistake the sections' readers report
    restart = _job_hang_timeout(read, _restart(read, _section(top, "restart", {})), launcher, launcher_args)
    if hosts == "netns" and (launcher not in ("torchrun", "slurm") or workload.facts.nodes < 2):
        raise read.error("hosts", f"hosts: netns puts each node in a network namespace of its own and needs "
                                  f"launcher: torchrun or slurm with workload nodes >= 2; got launcher: {launcher}, "
                                  f"nodes: {workload.facts.nodes}")
    if launcher == "slurm" and hosts not in ("netns", "cluster"):
        raise read.error("hosts", f"launcher: slurm runs either on the Slurm cluster this machine submits to "
                                  f"(hosts: cluster) or on chaos's own cluster of simulated hosts (hosts: netns); "
                                  f"got hosts: {hosts}")
    if hosts == "cluster" and (launcher not in ("slurm", "torchrun") or workload.facts.nodes < 2):
        raise read.error("hosts", f"hosts: cluster runs the job on the nodes of an existing Slurm cluster (ranks as "
                                  f"agents' children, or a torchrun per node) and needs launcher: slurm or torchrun "
                                  f"with workload nodes >= 2; got launcher: {launcher}, "
                                  f"nodes: {workload.facts.nodes}")
    if restart.by == "job" and (launcher not in ELASTIC or hosts == "cluster" or workload.facts.nodes != 1):
        # several nodes: each torchrun agent counts only the restarts its own workers caused
        # (TORCHELASTIC_RESTART_COUNT is per node), so the ranks could not name the attempt they belong to
        raise read.error("restart.by", f"by: job observes the job's own recovery, the elastic restarts of torchrun "
                                       f"or ft_launcher (--max-restarts), which needs launcher: torchrun or "
                                       f"ft_launcher on this machine with workload nodes: 1; got launcher: "
                                       f"{launcher}, hosts: {hosts}, nodes: {workload.facts.nodes}")
    restart = _in_process_restarts(read, restart, workload.facts)
    if workload.facts.node_local is not None and hosts != "netns":
        raise read.error(f"workload.{workload.facts.node_local}", "node-local storage needs a disk per node, and "
                                                                  "only hosts: netns gives each node one; add hosts: netns")
    faults = _faults(read, _section(top, "faults", []), workload, restart)
    _check_process_targets(read, faults, launcher)
    _check_node_faults(read, faults, hosts)
    golden = _golden(read, _section(top, "golden", {}), base_dir)
    tolerance = _tolerance(read, _section(top, "tolerance", {}))
    accepted = _accepted(read, _section(top, "accept_state_differences", {}))
    checks = _checks(read, top.get("checks", "all"))

    return Scenario(
        name=name, workload=workload, workload_mapping=copy.deepcopy(dict(workload_mapping)),
        description=description, seed=seed, launcher=launcher, launcher_args=launcher_args, hosts=hosts, faults=faults, restart=restart, golden=golden,
        tolerance=tolerance, accepted_state_differences=accepted, checks=checks, source=source, base_dir=base_dir,
    )


# ---- sections ------------------------------------------------------------------------------------------
def _section(top: Mapping, key: str, default: Any) -> Any:
    value = top.get(key)
    return default if value is None else value


def _check_process_targets(read: _Fields, faults: tuple[FaultSpec, ...], launcher: str) -> None:
    """A fault on a rank's launcher or rank monitor: a signal or a pause, where there is such a process."""
    for i, fault in enumerate(faults):
        if not isinstance(fault, ScriptedFault) or fault.target.process == "rank":
            continue
        where = f"faults[{i}].target.process"
        process = fault.target.process
        if process == "launcher" and launcher not in ELASTIC:
            raise read.error(where, f"a rank's launcher is the elastic agent that started it: launcher: torchrun or "
                                    f"ft_launcher; got launcher: {launcher}")
        if process == "rank_monitor" and launcher != "ft_launcher":
            raise read.error(where, f"rank monitors are ft_launcher's: launcher: ft_launcher; got launcher: {launcher}")
        if fault.action.kind not in ("signal", "pause"):
            raise read.error(where, f"a {process.replace('_', ' ')} gets a signal or a pause; got a {fault.action.kind}")


def _launcher_args(read: _Fields, value: Any, launcher: str) -> tuple[str, ...]:
    """Options to the elastic launcher, as `--name=value` strings; never one chaos sets (where the job meets,
    its restart budget, where the launcher logs: ELASTIC_SETS)."""
    if value in ([], None):
        return ()
    if launcher not in ELASTIC:
        raise read.error("launcher_args", f"options for the elastic launcher (torchrun, ft_launcher); launcher: "
                                          f"{launcher} has none")
    if not isinstance(value, list):
        raise read.error("launcher_args", f"expected a list of options like --monitor-interval=0.5, got {show(value)}")
    args = []
    for i, item in enumerate(value):
        where = f"launcher_args[{i}]"
        text = read.string(item, where, non_empty=True)
        name = text.split("=", 1)[0]
        if not name.startswith("--") or any(c.isspace() or not c.isprintable() for c in text):
            raise read.error(where, f"expected an option --name or --name=value (no spaces), got {show(text)}")
        if name in ELASTIC_SETS or name.replace("_", "-") in ELASTIC_SETS:
            raise read.error(where, f"{name} is set by chaos (where the job meets, its restart budget from "
                                    f"restart.max_restarts, where the launcher logs); leave it out")
        args.append(text)
    return tuple(args)


def _restart(read: _Fields, value: Any) -> RestartPolicy:
    """The restart policy's fields (chaos.plan.RestartPolicy), each by the reader below; missing: the default."""
    return read_dataclass(RestartPolicy, value, read, "restart", readers=_RESTART_READERS, noun="key")


def _warm(read: _Fields, value: Any, where: str) -> bool | str | None:
    if value == "auto":
        return None
    if value != "fork" and not isinstance(value, bool):
        raise read.error(where, f"expected fork, true (warm spares), false (cold) or auto, got {show(value)}")
    return value


_RESTART_READERS = {
    "max_restarts": lambda read, value, where: read.integer(value, where, low=0, high=MAX_RESTARTS),
    "teardown_grace_s": lambda read, value, where: read.number(value, where),
    "hang_timeout_s": lambda read, value, where: read.number(value, where, strict=True),
    "startup_timeout_s": lambda read, value, where: read.number(value, where, strict=True),
    "warm": _warm,
    "by": lambda read, value, where: read.choice(value, where, RESTARTS_BY),
    "job_hang_timeout_s": lambda read, value, where: None if value is None else read.number(value, where, strict=True),
}


def _job_hang_timeout(read: _Fields, restart: RestartPolicy, launcher: str,
                      launcher_args: tuple[str, ...]) -> RestartPolicy:
    """restart.job_hang_timeout_s: given, or ft_launcher's rank heartbeat timeout from its arguments (its
    rank monitors kill a rank whose heartbeats stop that long, whoever restarts the job then)."""
    if restart.job_hang_timeout_s is not None or launcher != "ft_launcher":
        return restart
    for arg in launcher_args:
        name, _, value = arg.partition("=")
        if name.replace("_", "-") == "--ft-rank-heartbeat-timeout":
            try:
                seconds = float(value)
            except ValueError:
                raise read.error("launcher_args", f"--ft-rank-heartbeat-timeout: expected seconds, got {show(value)}")
            return dataclasses.replace(restart, job_hang_timeout_s=seconds)
    return restart


def _in_process_restarts(read: _Fields, restart: RestartPolicy, facts: WorkloadFacts) -> RestartPolicy:
    """A workload that re-enters its training function in the same processes after a failure (NVRx's in-process
    restart) brings a recovery layer of its own: under test only with restart.by: job (with chaos's restarts
    both would act), and then the only layer that restarts: the launcher gets --max-restarts=0, since with its
    restarts too an attempt number (chaos.control.rank_attempt) would name two attempts. restart.max_restarts
    is then the in-process budget: the job's own where it sets one (it must agree), else the number of re-entries
    chaos follows before it stops the job; the layer's soft timeout is the job's own hang detection."""
    layer = facts.in_process
    if layer is None:
        return restart
    where = f"workload.{layer.option}"
    budget = layer.restarts if layer.restarts is not None else "N"
    if restart.by != "job":
        raise read.error(where, f"{layer.turned_on_by} makes the job restart itself in-process (its own recovery), "
                                f"and chaos's restarts (restart.by: {restart.by}) would act beside it; set restart: "
                                f"{{by: job, max_restarts: {budget}}} with launcher: torchrun")
    if layer.restarts is not None and restart.max_restarts != layer.restarts:
        raise read.error("restart.max_restarts", f"{restart.max_restarts}, but the job restarts in-process at most "
                                                 f"{layer.restarts} time(s) ({where}): the launcher then restarts "
                                                 f"nothing (--max-restarts=0; its restarts and the re-entries would "
                                                 f"share attempt numbers) and max_restarts is the in-process "
                                                 f"budget; set max_restarts: {layer.restarts}")
    if restart.job_hang_timeout_s not in (None, layer.hang_timeout_s):
        raise read.error("restart.job_hang_timeout_s", f"the job's own hang detection is its in-process restart's "
                                                       f"soft timeout, {layer.hang_timeout_s:g} s ({where}); got "
                                                       f"{restart.job_hang_timeout_s:g}: leave it out or set the same")
    return dataclasses.replace(restart, job_hang_timeout_s=layer.hang_timeout_s)


def _faults(read: _Fields, value: Any, workload: Workload, restart: RestartPolicy) -> tuple[FaultSpec, ...]:
    if not isinstance(value, list):
        raise read.error("faults", f"expected a list of faults, got {show(value)}")
    faults: list[FaultSpec] = []
    for i, item in enumerate(value):
        where = f"faults[{i}]"
        if isinstance(item, Mapping) and "random" in item:
            if len(item) != 1:
                extra = sorted(str(k) for k in item if k != "random")
                raise read.error(f"{where}.{extra[0]}", "a `random:` entry takes no other keys; put them inside it "
                                                        f"(keys: {list(RANDOM_KEYS)})")
            faults.append(_random(read, item["random"], f"{where}.random", workload, restart))
        else:
            faults.append(_scripted(read, item, where, workload, restart))
    return tuple(faults)


def _scripted(read: _Fields, value: Any, where: str, workload: Workload, restart: RestartPolicy) -> ScriptedFault:
    action_keys = tuple(faults.KINDS)  # what it does: one key per fault kind (chaos.faults)
    allowed = ("at", "trigger", "target") + action_keys + ("action",)
    raw = read.mapping(value, where, allowed)
    if "at" in raw and "trigger" in raw:
        raise read.error(f"{where}.trigger", "give the trigger once: `at:` or `trigger:`, not both")
    trigger_key = "trigger" if "trigger" in raw else "at"
    if trigger_key not in raw:
        raise read.error(f"{where}.at", "missing; expected e.g. at: {step: 3, phase: backward} or at: {after_s: 10}")
    trigger = _trigger(read, raw[trigger_key], f"{where}.{trigger_key}", workload, restart)
    if "target" not in raw:
        raise read.error(f"{where}.target", "missing; expected {rank: N}, {ranks: [..]}, {node: N}, all or random")
    target = _target(read, raw["target"], f"{where}.target", workload)

    actions = [key for key in action_keys + ("action",) if key in raw]
    if len(actions) != 1:
        raise read.error(f"{where}.signal", "expected exactly one action: signal: SIGKILL, corrupt: flip, pause: 5 "
                                            f"(seconds) or action: {{signal: ...}}; got {actions or 'none'}")
    action_raw = raw if actions[0] != "action" else read.mapping(raw["action"], f"{where}.action", action_keys)
    action_where = where if actions[0] != "action" else f"{where}.action"
    given = [key for key in action_keys if key in action_raw]
    if len(given) != 1:
        raise read.error(action_where, f"expected exactly one of {list(action_keys)}, got {given or 'none'}")
    kind = faults.KINDS[given[0]]
    action = kind.from_yaml(read, action_raw[kind.kind], _join(action_where, kind.kind))
    if action.needs_probe and (trigger.phase is None or workload.observation != "probe"):
        # done by the probe on the held rank's release: no hold without a phase trigger and a probe
        got = ("a wall-clock trigger (after_s)" if trigger.phase is None
               else f"a workload followed from its logs (kind: {workload.kind})")
        raise read.error(_join(action_where, kind.kind),
                         f"a {kind.kind} fault is done by chaos's probe inside a held rank (on its release): it "
                         f"needs a phase trigger (at: {{step, phase}}) and a workload chaos's probe runs in "
                         f"(kind: gpt3); got {got}")
    return ScriptedFault(trigger=trigger, target=target, action=action)


def _check_node_faults(read: _Fields, faults: tuple, hosts: str) -> None:
    """A fault that changes a host (its network, CPU quota or disk) is done to simulated hosts only, and one
    that acts on a whole host needs hosts: netns (a link, a disk of each node's own) and a node to act on."""
    for i, fault in enumerate(faults):
        if not isinstance(fault, ScriptedFault):
            continue
        action = fault.action
        kind = action.kind
        if hosts == "cluster" and action.changes_host:
            raise read.error(f"faults[{i}].{kind}", f"a {kind} changes a host itself (its network, its CPU quota or "
                                                    f"its disk), which chaos does only to simulated hosts "
                                                    f"(hosts: netns), never to a real cluster's nodes; signals, "
                                                    f"pauses and checkpoint corruption work on hosts: cluster")
        if action.host_needs is None:
            continue
        if hosts != "netns":
            raise read.error(f"faults[{i}].{kind}", f"a {kind} acts on a host, and only hosts: netns gives each "
                                                    f"node {action.host_needs}; add hosts: netns")
        if fault.target.kind != "node":
            raise read.error(f"faults[{i}].target", f"a {kind} acts on a whole node: expected {{node: N}}, got "
                                                    f"{fault.target.kind}")


def _trigger(read: _Fields, value: Any, where: str, workload: Workload, restart: RestartPolicy) -> Trigger:
    raw = read.mapping(value, where, TRIGGER_KEYS)
    rules, facts = workload.phases, workload.facts
    last_attempt = restart.max_restarts + 1
    attempt = read.integer(raw.get("attempt", 1), f"{where}.attempt", low=1, high=last_attempt,
                           high_reason=f"max_restarts={restart.max_restarts} allows {last_attempt} attempts")
    if raw.get("after_s") is not None:
        for key in ("step", "phase", "index", "delay_s"):
            if key in raw:
                raise read.error(f"{where}.{key}", "a wall-clock trigger (after_s) takes no step, phase, index or "
                                                   "delay_s")
        return Trigger(attempt=attempt, after_s=read.number(raw["after_s"], f"{where}.after_s", strict=True))
    if "phase" in raw:
        phase = read.choice(raw["phase"], f"{where}.phase", rules.phases)
    elif rules.default_phase is not None and "step" in raw:
        phase = rules.default_phase
    else:
        also = f"; or only step: N ({rules.default_phase})" if rules.default_phase else ""
        raise read.error(f"{where}.phase", f"missing; expected one of {list(rules.phases)} (or after_s for a "
                                           f"wall-clock trigger{also})")
    step = raw.get("step")
    if step is not None:
        step = read.integer(step, f"{where}.step", low=1, high=facts.train_iters,
                            high_reason=f"train_iters={facts.train_iters}")
    index = raw.get("index")
    if index is not None:
        limit = rules.index_limit(phase)
        if limit is None:
            indexed = ", ".join(f"{p} ({what})" for p, (_, what) in rules.index_limits.items())
            raise read.error(f"{where}.index", f"phase {phase} has no index; index is for {indexed or 'no phase'}")
        high, reason = limit
        index = read.integer(index, f"{where}.index", low=1, high=high, high_reason=reason)
    delay_s = raw.get("delay_s")
    if delay_s is not None:
        if not rules.delay_allowed:
            raise read.error(f"{where}.delay_s", "this workload's faults land exactly where the probe holds the rank; "
                                                 "delay_s is for workloads followed from their logs (kind: "
                                                 "megatron_lm): pick a phase instead")
        delay_s = read.number(delay_s, f"{where}.delay_s", strict=True)
    return Trigger(step=step, phase=phase, index=index, attempt=attempt, delay_s=delay_s)


def _rank(read: _Fields, value: Any, where: str, workload: Workload) -> int:
    world_size = workload.facts.world_size
    return read.integer(value, where, low=0, high=world_size - 1, high_reason=f"a rank < world_size={world_size}")


def _target(read: _Fields, value: Any, where: str, workload: Workload) -> TargetSpec:
    if isinstance(value, int) and not isinstance(value, bool):
        return TargetSpec(kind="rank", ranks=(_rank(read, value, where, workload),))
    if isinstance(value, str):
        kind = read.choice(value, where, ("all", "random"), "a mapping ({rank: N}, {ranks: [..]}, {node: N}) or")
        return TargetSpec(kind=kind)  # type: ignore[arg-type]
    raw = dict(read.mapping(value, where, TARGET_KEYS + (TARGET_PROCESS_KEY,)))
    if TARGET_PROCESS_KEY in raw:
        process = read.choice(raw.pop(TARGET_PROCESS_KEY), f"{where}.{TARGET_PROCESS_KEY}", PROCESSES)
        if set(raw) != {"rank"}:
            raise read.error(f"{where}.{TARGET_PROCESS_KEY}", f"a process of one rank: write it with rank: N, got "
                                                              f"{sorted(raw) or 'no rank'}")
        rank = _rank(read, raw["rank"], f"{where}.rank", workload)
        return TargetSpec(kind="rank", ranks=(rank,), process=process)
    if len(raw) != 1:
        raise read.error(where, f"expected exactly one of {list(TARGET_KEYS)}, got {sorted(raw) or 'none'}")
    (kind, inner), = raw.items()
    if kind == "rank":
        return TargetSpec(kind="rank", ranks=(_rank(read, inner, f"{where}.rank", workload),))
    if kind == "ranks":
        if not isinstance(inner, list) or not inner:
            raise read.error(f"{where}.ranks", f"expected a non-empty list of ranks, got {show(inner)}")
        ranks = [_rank(read, r, f"{where}.ranks[{i}]", workload) for i, r in enumerate(inner)]
        if len(set(ranks)) != len(ranks):
            raise read.error(f"{where}.ranks", f"ranks repeat: {ranks}")
        return TargetSpec(kind="ranks", ranks=tuple(sorted(ranks)))
    if kind == "node":
        nodes = workload.facts.nodes
        node = read.integer(inner, f"{where}.node", low=0, high=nodes - 1, high_reason=f"a node < nodes={nodes}")
        return TargetSpec(kind="node", node=node)
    if kind == "all":
        if inner is not True:
            raise read.error(f"{where}.all", f"expected true (or write `target: all`), got {show(inner)}")
        return TargetSpec(kind="all")
    world_size = workload.facts.world_size
    count = read.integer(inner, f"{where}.random", low=1, high=world_size, high_reason=f"world_size={world_size}")
    return TargetSpec(kind="random", count=count)


def _random(read: _Fields, value: Any, where: str, workload: Workload, restart: RestartPolicy) -> RandomFaults:
    raw = read.mapping(value, where, RANDOM_KEYS)
    signals = read.choices(raw.get("signals", ["SIGKILL"]), f"{where}.signals", SIGNALS)
    ranks: tuple[int, ...] = ()
    if "ranks" in raw:
        if not isinstance(raw["ranks"], list) or not raw["ranks"]:
            raise read.error(f"{where}.ranks", f"expected a non-empty list of ranks, got {show(raw['ranks'])}")
        ranks = tuple(sorted({_rank(read, r, f"{where}.ranks[{i}]", workload) for i, r in enumerate(raw["ranks"])}))
    attempt = read.integer(raw.get("attempt", 1), f"{where}.attempt", low=1)
    # Every planned fault ends its attempt, and the run still has to finish afterwards.
    budget = restart.max_restarts + 1 - attempt
    if budget < 1:
        raise read.error(f"{where}.attempt", f"max_restarts={restart.max_restarts} leaves no restart after attempt "
                                             f"{attempt}; raise restart.max_restarts")
    budget_reason = f"each fault costs a restart: attempt={attempt}, max_restarts={restart.max_restarts}"

    if "mtbf_s" in raw:
        for key in ("steps", "phases"):
            if key in raw:
                raise read.error(f"{where}.{key}", "an MTBF entry (mtbf_s) plans wall-clock faults; steps and "
                                                   "phases are for step mode (count/steps/phases)")
        count = read.integer(raw.get("count", budget), f"{where}.count", low=1, high=budget, high_reason=budget_reason)
        until_s = raw.get("until_s")
        return RandomFaults(
            signals=signals, ranks=ranks, attempt=attempt, count=count,
            mtbf_s=read.number(raw["mtbf_s"], f"{where}.mtbf_s", strict=True),
            until_s=None if until_s is None else read.number(until_s, f"{where}.until_s", strict=True),
        )
    if "until_s" in raw:
        raise read.error(f"{where}.until_s", "until_s belongs to an MTBF entry (with mtbf_s)")
    count = read.integer(raw.get("count", 1), f"{where}.count", low=1, high=budget, high_reason=budget_reason)
    steps = None
    if "steps" in raw:
        pair = raw["steps"]
        if not (isinstance(pair, list) and len(pair) == 2):
            raise read.error(f"{where}.steps", f"expected [first, last] (inclusive), got {show(pair)}")
        train_iters = workload.facts.train_iters
        low = read.integer(pair[0], f"{where}.steps[0]", low=1, high=train_iters,
                           high_reason=f"train_iters={train_iters}")
        high = read.integer(pair[1], f"{where}.steps[1]", low=low)
        steps = (low, high)
    phases: tuple[str, ...] = ()
    if "phases" in raw:
        phases = read.choices(raw["phases"], f"{where}.phases", workload.phases.phases)
        if "checkpoint.load" in phases:
            raise read.error(f"{where}.phases", "checkpoint.load happens once per attempt, before any step; "
                                                "script it as a fault with at: {phase: checkpoint.load, attempt: N}")
    entry = RandomFaults(signals=signals, ranks=ranks, attempt=attempt, count=count, steps=steps, phases=phases)
    available = len(entry.candidate_points(workload))
    if count > available:
        raise read.error(f"{where}.count", f"{count} faults need {count} distinct steps, but only {available} step(s) "
                                           "in range can reach these phases (checkpoint phases need a saving step)")
    return entry


def _golden(read: _Fields, value: Any, base_dir: Path) -> GoldenSpec:
    raw = {"path": value} if isinstance(value, str) else read.mapping(value, "golden", GOLDEN_KEYS)
    mode = raw.get("mode")
    if mode is not None:
        mode = read.choice(mode, "golden.mode", GOLDEN_MODES)
    path = raw.get("path")
    if path is not None:
        path = _resolve_golden(read, read.string(path, "golden.path"), base_dir)
    repeats = raw.get("repeats")
    if repeats is not None:
        repeats = read.integer(repeats, "golden.repeats", 1, MAX_GOLDEN_REPEATS)
    return GoldenSpec(path=path, mode=mode, repeats=repeats)


def _resolve_golden(read: _Fields, text: str, base_dir: Path) -> Path:
    path = Path(text).expanduser()
    tried = [path] if path.is_absolute() else [base_dir / path, Path.cwd() / path]
    for candidate in tried:
        try:
            if candidate.is_file():
                return candidate.resolve()
        except (OSError, ValueError) as error:  # a name too long for the filesystem, a NUL byte
            raise read.error("golden.path", f"not a usable path ({getattr(error, 'strerror', None) or error}): "
                                            f"{show(text)}") from None
    raise read.error("golden.path", f"no golden file at {' or '.join(str(p) for p in tried)}; record one first "
                                    "or leave golden.path out")


def _tolerance(read: _Fields, value: Any) -> dict[str, float]:
    raw = read.mapping(value, "tolerance", KNOWN_METRICS)
    out = {}
    for metric in raw:
        where = f"tolerance.{metric}"
        if raw[metric] == float("inf"):
            raise read.error(where, "an infinite tolerance accepts any value: the comparison would check nothing; "
                                    "give a relative tolerance such as 0.05")
        out[metric] = read.number(raw[metric], where)
    return out


def _accepted(read: _Fields, value: Any) -> dict[str, str]:
    where = "accept_state_differences"
    if not isinstance(value, Mapping):
        raise read.error(where, f"expected a mapping of checkpoint entry pattern -> the reason it may differ "
                                f"(e.g. '*.torch_rng_state': 'upstream finding ...'), got {show(value)}")
    out = {}
    for pattern, reason in value.items():
        if not isinstance(pattern, str) or not pattern.strip() or pattern.strip("*?") == "":
            raise read.error(where, f"expected a pattern naming checkpoint entries (fnmatch, e.g. "
                                    f"'*.torch_rng_state'), got {show(pattern)}: one that matches everything would "
                                    f"accept every difference")
        if not isinstance(reason, str) or not reason.strip():
            raise read.error(f"{where}.{pattern}", "expected the reason this difference is accepted (a finding, an "
                                                   "issue link): an accepted difference is reported with it")
        out[pattern] = reason.strip()
    return out


def _checks(read: _Fields, value: Any) -> tuple[str, ...]:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names:
        raise read.error("checks", f"expected `all` or a non-empty list of {list(CHECK_NAMES)}, got {show(value)}")
    picked: list[str] = []
    for i, name in enumerate(names):
        where = "checks" if isinstance(value, str) else f"checks[{i}]"
        if name == "all":
            picked.extend(CHECK_NAMES)
        else:
            picked.append(read.choice(name, where, CHECK_NAMES + ("all",)))
    return tuple(name for name in CHECK_NAMES if name in picked)


# ---- overrides (CLI --set, pytest marker kwargs) ---------------------------------------------------------
def apply_overrides(scenario: Scenario, overrides: Mapping[str, Any]) -> Scenario:
    """A new scenario with dotted keys replaced (`workload.train_iters=8`, `faults.0.at.step=4`, `seed=3`),
    validated again from scratch. String values are read as YAML (`8` -> 8, `[1, 2]` -> a list)."""
    if not overrides:
        return scenario
    mapping = scenario_to_mapping(scenario)
    source = f"{scenario.source} (with overrides {', '.join(overrides)})"
    for key, value in overrides.items():
        set_dotted(mapping, key, override_value(value), source)
    return load_scenario_mapping(mapping, source, scenario.base_dir)
